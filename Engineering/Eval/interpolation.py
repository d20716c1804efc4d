"""Evolution energy and interpolation distance (model-dependent: they need the decoder; seed 003).

For pairs of test samples (a, b) the latents are interpolated linearly, z_t = (1 - t) z_a + t z_b at
``n_steps`` + 1 evenly spaced t, and decoded. The evolution energy of a pair is the length of the decoded path,
sum_t ||D(z_{t+1}) - D(z_t)||, over the straight-line distance ||D(z_b) - D(z_a)||: 1 when the decoder maps the
latent segment to a straight path, more when morphing one sample into another takes a detour. The interpolation
distance is the mean distance of the inner interpolants to their nearest real sample, over the mean distance
between real nearest neighbours: how far interpolants leave the data. Lower is better for both.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from Engineering.Eval.bootstrap import bootstrap_ci, weighted_mean
from Engineering.Eval.result import LOWER, MetricResult

METRICS = {
    "evolution_energy": (LOWER, "Decoded length of the latent segment between two samples over their decoded "
                                "distance (1 = straight). Lower is better."),
    "interpolation_distance": (LOWER, "Distance of decoded interpolants to the nearest real sample over the real "
                                      "nearest-neighbour distance. Lower is better."),
}


def _pairs(n: int, n_pairs: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    a = rng.integers(0, n, n_pairs)
    b = (a + rng.integers(1, n, n_pairs)) % n  # never a sample with itself
    return np.stack([a, b], 1)


def pointwise_interpolation(decode: Callable[[np.ndarray], np.ndarray], Z: np.ndarray, X: np.ndarray,
                            n_pairs: int = 32, n_steps: int = 8, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(evolution energy, interpolation distance) per pair. ``X``: the real samples (n, ...) the distances use."""
    if len(Z) < 2:
        raise ValueError("interpolation needs at least 2 samples")
    flat = X.reshape(len(X), -1).astype(float)
    real_nn = np.sort(np.linalg.norm(flat[:, None] - flat[None], axis=-1), axis=1)[:, 1].mean()
    t = np.linspace(0, 1, n_steps + 1)
    energy, dist = [], []
    for a, b in _pairs(len(Z), n_pairs, seed):
        zs = (1 - t)[:, None] * Z[a] + t[:, None] * Z[b]
        path = np.asarray(decode(zs), dtype=float).reshape(len(t), -1)
        chord = np.linalg.norm(path[-1] - path[0])
        length = np.linalg.norm(np.diff(path, axis=0), axis=1).sum()
        energy.append(length / chord if chord > 0 else np.nan)
        inner = path[1:-1]
        dist.append(np.linalg.norm(inner[:, None] - flat[None], axis=-1).min(1).mean() / real_nn)
    return np.asarray(energy), np.asarray(dist)


def interpolation_metrics(decode, Z: np.ndarray, X: np.ndarray, n_boot: int, seed: int, n_pairs: int = 32,
                          n_steps: int = 8) -> dict[str, MetricResult]:
    energy, dist = pointwise_interpolation(decode, Z, X, n_pairs, n_steps, seed)
    return {name: MetricResult.from_ci(bootstrap_ci(weighted_mean(v), len(v), n_boot, seed), LOWER, len(v),
                                       note=f"{n_pairs} pairs, {n_steps} steps")
            for name, v in (("evolution_energy", energy), ("interpolation_distance", dist))}
