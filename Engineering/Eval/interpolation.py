"""Latent interpolation metrics (model-dependent: they need the decoder; seed 003).

Two are the reference's, as defined in AllenCell's benchmarking_representations (``src/br/features/evolve.py``
at 60c6b7093945c05ba2f38d8ab580d63b0d76df57, the code of Vyas et al., Allen Institute for Cell Science, bioRxiv
2024). Test samples are paired (disjoint pairs of a seeded shuffle, as the reference's batches of two random test
cells) and each pair's latents are interpolated, z_t = z_a + t (z_b - z_a), at the reference's t = 0.1, ..., 0.9:

- ``evolution_energy`` (the reference's "Evolution Energy"): (L(D(z_t), x_a) + L(D(z_t), x_b)) / L(x_a, x_b), with
  x_a, x_b the real inputs and L the reconstruction loss (mean squared error for images; for point clouds the
  reference's Chamfer loss, ``invariance.chamfer_sum``), averaged over pairs and t. A decoder that morphs one
  sample into the other scores below 1 (an exact decoder whose interpolants are the pixel-wise blends scores
  mean(t^2 + (1-t)^2) = 0.633 under MSE); one that ignores its latent and draws a mean sample scores about 1 or
  more. Lower is better. Where the model poses its decoded output by its input (a rotation-invariant image model,
  the VN point-cloud encoder), D(z_t) is compared with x_a in x_a's pose and with x_b in x_b's pose.
- ``embedding_distance`` (the reference's "closest_embedding_distance"): the Euclidean distance of z_t to the
  nearest latent of all embedded samples (the reference: every cell of its embedding table; here the run's
  latents in the benchmark, the two ends included), averaged over pairs and t, in latent units: how far
  interpolants leave the embedded data. Lower is better. (The reference also truncates latents to a common
  size across models; we do not.)

Two are this project's variants, under their own names:

- ``decoded_path_ratio``: the length of the decoded path, sum_t ||D(z_{t+1}) - D(z_t)||, over its chord
  ||D(z_b) - D(z_a)|| (t at ``n_steps`` + 1 even steps, random pairs): 1 when the decoder maps the segment to a
  straight path, more for a detour. It compares decoded outputs with each other, never with the inputs, so it
  cannot see a collapsed decoder (one that ignores its latent draws a straight, short path and scores 1 like an
  exact decoder): read it beside ``evolution_energy``.
- ``interpolation_distance``: the mean distance of the decoded inner interpolants to their nearest decoded real
  sample, over the mean distance between decoded real nearest neighbours.

CIs bootstrap the pairs.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from Engineering.Eval.bootstrap import bootstrap_ci, weighted_mean
from Engineering.Eval.result import LOWER, MetricResult

METRICS = {
    "evolution_energy": (
        LOWER,
        "Reference (AllenCell benchmarking_representations): (L(D(z_t), x_a) + L(D(z_t), "
        "x_b)) / L(x_a, x_b) over t = 0.1..0.9 of a latent segment between two samples; L = "
        "MSE (images) or the reference's Chamfer (point clouds). Lower is better.",
    ),
    "embedding_distance": (
        LOWER,
        "Reference (closest_embedding_distance): distance of latent interpolants to the "
        "nearest test latent, in latent units. Lower is better.",
    ),
    "decoded_path_ratio": (
        LOWER,
        "Project variant (not the reference's evolution energy): decoded length of a latent "
        "segment over its decoded chord (1 = straight); blind to a decoder that ignores "
        "its latent. Lower is better.",
    ),
    "interpolation_distance": (
        LOWER,
        "Project variant: distance of decoded interpolants to the nearest decoded real "
        "sample over the real nearest-neighbour distance. Lower is better.",
    ),
}
FRACTIONS = np.linspace(0, 1, 11)[1:-1]  # the reference's t = 0.1 ... 0.9 (its float steps, unrounded)


def reference_pairs(n: int, n_pairs: int | None, seed: int) -> np.ndarray:
    """(k, 2) disjoint pairs of a seeded shuffle of n samples, k = min(n_pairs, n // 2)."""
    k = n // 2 if n_pairs is None else min(n_pairs, n // 2)
    if k < 1:
        raise ValueError("interpolation needs at least 2 samples")
    return np.random.default_rng(seed).permutation(n)[: 2 * k].reshape(k, 2)


def pointwise_evolution_energy(
    render_at: Callable[[np.ndarray, np.ndarray], np.ndarray],
    inputs: np.ndarray,
    Z: np.ndarray,
    target: np.ndarray,
    distance: Callable[[np.ndarray, np.ndarray], np.ndarray],
    pairs: np.ndarray,
) -> np.ndarray:
    """(n_pairs, 9) energies. ``render_at(x, z)``: the decoding of each row of z in the pose of the matching input
    row of x (the plain decoding for models without a pose); ``target``: the inputs in the decoder's output space;
    ``distance(a, b)``: the loss per sample."""
    out = np.full((len(pairs), len(FRACTIONS)), np.nan)
    for i, (a, b) in enumerate(pairs):
        total = float(distance(target[a : a + 1], target[b : b + 1])[0])
        if not total > 0:
            continue  # two identical samples: the reference's division by 0 (dropped there as inf / NaN)
        zs = Z[a] + FRACTIONS[:, None] * (Z[b] - Z[a])
        k = len(FRACTIONS)
        to_a = distance(render_at(np.repeat(inputs[a : a + 1], k, 0), zs), np.repeat(target[a : a + 1], k, 0))
        to_b = distance(render_at(np.repeat(inputs[b : b + 1], k, 0), zs), np.repeat(target[b : b + 1], k, 0))
        out[i] = (np.asarray(to_a, float) + np.asarray(to_b, float)) / total
    return out


def evolution_energy(
    render_at,
    inputs: np.ndarray,
    Z: np.ndarray,
    target: np.ndarray,
    distance,
    n_boot: int,
    seed: int,
    n_pairs: int | None = None,
) -> MetricResult:
    pairs = reference_pairs(len(Z), n_pairs, seed)
    per_pair = np.nanmean(pointwise_evolution_energy(render_at, inputs, Z, target, distance, pairs), axis=1)
    return MetricResult.from_ci(
        bootstrap_ci(weighted_mean(per_pair), len(per_pair), n_boot, seed),
        LOWER,
        len(per_pair),
        note=f"{len(per_pair)} pairs x t = 0.1..0.9",
    )


def pointwise_embedding_distance(Z: np.ndarray, pairs: np.ndarray, pool: np.ndarray | None = None) -> np.ndarray:
    """(n_pairs, 9) distances of each interpolant between rows of Z to its nearest latent among the rows of
    ``pool`` (default: Z itself)."""
    Z = np.asarray(Z, dtype=float)
    pool = Z if pool is None else np.asarray(pool, dtype=float)
    out = np.empty((len(pairs), len(FRACTIONS)))
    for i, (a, b) in enumerate(pairs):
        zs = Z[a] + FRACTIONS[:, None] * (Z[b] - Z[a])
        out[i] = np.linalg.norm(zs[:, None] - pool[None], axis=-1).min(1)
    return out


def embedding_distance(
    Z: np.ndarray, n_boot: int, seed: int, n_pairs: int | None = None, pool: np.ndarray | None = None
) -> MetricResult:
    """Pairs of rows of ``Z``; nearest latents among ``pool`` (all embedded samples; default: Z)."""
    pairs = reference_pairs(len(Z), n_pairs, seed)
    per_pair = pointwise_embedding_distance(Z, pairs, pool).mean(1)
    return MetricResult.from_ci(
        bootstrap_ci(weighted_mean(per_pair), len(per_pair), n_boot, seed),
        LOWER,
        len(per_pair),
        note=f"{len(per_pair)} pairs x t = 0.1..0.9, latent units",
    )


def _pairs(n: int, n_pairs: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    a = rng.integers(0, n, n_pairs)
    b = (a + rng.integers(1, n, n_pairs)) % n  # never a sample with itself
    return np.stack([a, b], 1)


def pointwise_interpolation(
    decode: Callable[[np.ndarray], np.ndarray],
    Z: np.ndarray,
    X: np.ndarray,
    n_pairs: int = 32,
    n_steps: int = 8,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """(decoded path ratio, interpolation distance) per pair. ``X``: the real samples (n, ...) the distances use."""
    if len(Z) < 2:
        raise ValueError("interpolation needs at least 2 samples")
    flat = X.reshape(len(X), -1).astype(float)
    real_nn = np.sort(np.linalg.norm(flat[:, None] - flat[None], axis=-1), axis=1)[:, 1].mean()
    t = np.linspace(0, 1, n_steps + 1)
    ratio, dist = [], []
    for a, b in _pairs(len(Z), n_pairs, seed):
        zs = (1 - t)[:, None] * Z[a] + t[:, None] * Z[b]
        path = np.asarray(decode(zs), dtype=float).reshape(len(t), -1)
        chord = np.linalg.norm(path[-1] - path[0])
        length = np.linalg.norm(np.diff(path, axis=0), axis=1).sum()
        ratio.append(length / chord if chord > 0 else np.nan)
        inner = path[1:-1]
        dist.append(np.linalg.norm(inner[:, None] - flat[None], axis=-1).min(1).mean() / real_nn)
    return np.asarray(ratio), np.asarray(dist)


def interpolation_metrics(
    decode, Z: np.ndarray, X: np.ndarray, n_boot: int, seed: int, n_pairs: int = 32, n_steps: int = 8
) -> dict[str, MetricResult]:
    """The project's two variants: {"decoded_path_ratio", "interpolation_distance"}."""
    ratio, dist = pointwise_interpolation(decode, Z, X, n_pairs, n_steps, seed)
    return {
        name: MetricResult.from_ci(
            bootstrap_ci(weighted_mean(v), len(v), n_boot, seed),
            LOWER,
            len(v),
            note=f"{n_pairs} pairs, {n_steps} steps",
        )
        for name, v in (("decoded_path_ratio", ratio), ("interpolation_distance", dist))
    }
