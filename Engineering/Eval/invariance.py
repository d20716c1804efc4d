"""Model-dependent metrics (``--run``): they need the encoder/decoder, not just latents.

Hook for the engine: give these functions callables that map a batch of images
(n, ..., X, Y) to latents (n, L) or reconstructions of the input's shape; this
module never loads a model itself (main_benchmark's ``--run`` does, through
Engineering/Engines/saved_runs.py).

- rotation/flip sensitivity: for the 90/180/270 degree in-plane rotations and the
  two flips, the relative change ||z_r - z_0|| / (||z_0|| + ||z_r||) (0 =
  invariant, 1 = maximal), averaged per sample; lower is better when the label
  of interest does not depend on orientation (cf. the rotation-invariance
  metric of the AllenCell benchmark, seed 003).
- reconstruction error: mean squared error per sample; lower is better.
- the reference's rotation invariance error (``rotation_invariance_error``), as defined in AllenCell's
  benchmarking_representations (``src/br/features/rotation_invariance.py`` at
  60c6b7093945c05ba2f38d8ab580d63b0d76df57; Vyas et al., bioRxiv 2024): each batch of samples is encoded
  unrotated and rotated by 90, 180 and 270 degrees about z (the in-plane X-Y axes of an image or volume, the z
  axis of a point cloud); per batch and angle the value is ||Z_r - Z_0||_F / (||Z_0||_F + ||Z_r||_F), with the
  Frobenius norms over the whole batch's latent matrix, and the metric is the mean over batches and the four
  angles, 0 degrees included (whose value is 0). Lower is better. The CI bootstraps the batches. (The reference
  truncates latents to a common size across models; we do not.) ``rotation_sensitivity`` above is our per-sample
  variant with the two flips added; ``rotation.rotation_invariance`` our arbitrary-angle variant.
- the reference's point-cloud reconstruction loss (``reconstruction_chamfer``): cyto-dl's ChamferLoss, which the
  reference evaluates point-cloud models with: per cloud, the sum over the points of each cloud of the (unsquared)
  distance to the nearest point of the other, both ways. Not the mean of squared distances of
  ``Science/chamfer`` (the training loss and val_chamfer). Lower is better.
- the reference's point-cloud "Reconstruction" column (``reconstruction_sinkhorn``): its save_embeddings scores
  each cloud with cyto-dl's GeomLoss, which (whatever p and blur it is given) is geomloss's debiased Sinkhorn
  divergence SamplesLoss("sinkhorn", p=2, blur=0.05) from the reconstruction to the input: about half the squared
  2-Wasserstein distance (``Science/transport.earth_movers`` / 2). Lower is better.
CIs bootstrap the per-sample values unless said otherwise.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from Engineering.Eval.bootstrap import bootstrap_ci, weighted_mean
from Engineering.Eval.result import LOWER, MetricResult

METRICS = {
    "rotation_sensitivity": (
        LOWER,
        "Project variant: per-sample relative latent change under 90° rotations and "
        "flips, ||z_r - z_0|| / (||z_0|| + ||z_r||). Lower is better (more invariant).",
    ),
    "reconstruction_mse": (LOWER, "Mean squared reconstruction error per sample. Lower is better."),
    "rotation_invariance_error": (
        LOWER,
        "Reference (AllenCell benchmarking_representations): ||Z_r - Z_0|| / "
        "(||Z_0|| + ||Z_r||) over each batch's latent matrix, r = 0/90/180/270 "
        "degrees about z, averaged. Lower is better (more invariant).",
    ),
    "reconstruction_chamfer": (
        LOWER,
        "Reference (cyto-dl ChamferLoss, point clouds): sum of nearest-point distances "
        "of the reconstruction to the input and back, per cloud. Lower is better.",
    ),
    "reconstruction_sinkhorn": (
        LOWER,
        "Reference (the AllenCell benchmark's point-cloud Reconstruction, cyto-dl "
        "GeomLoss): geomloss Sinkhorn divergence, p=2, blur 0.05, per cloud. Lower is "
        "better.",
    ),
}


def in_plane_transforms(images: np.ndarray) -> list[np.ndarray]:
    """The 90/180/270 degree rotations and the two flips over the last two (X, Y) axes."""
    return [np.rot90(images, k, axes=(-2, -1)) for k in (1, 2, 3)] + [images[..., ::-1, :], images[..., :, ::-1]]


def pointwise_rotation_sensitivity(encode: Callable[[np.ndarray], np.ndarray], images: np.ndarray) -> np.ndarray:
    z0 = np.asarray(encode(images), dtype=float)
    changes = []
    for transformed in in_plane_transforms(images):
        zr = np.asarray(encode(np.ascontiguousarray(transformed)), dtype=float)
        denom = np.linalg.norm(z0, axis=1) + np.linalg.norm(zr, axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            changes.append(np.where(denom > 0, np.linalg.norm(zr - z0, axis=1) / denom, 0.0))
    return np.mean(changes, axis=0)


def rotation_sensitivity(
    encode: Callable[[np.ndarray], np.ndarray], images: np.ndarray, n_boot: int, seed: int
) -> MetricResult:
    values = pointwise_rotation_sensitivity(encode, images)
    return MetricResult.from_ci(bootstrap_ci(weighted_mean(values), len(values), n_boot, seed), LOWER, len(values))


def reconstruction_mse(
    reconstruct: Callable[[np.ndarray], np.ndarray], images: np.ndarray, n_boot: int, seed: int
) -> MetricResult:
    recon = np.asarray(reconstruct(images), dtype=float)
    values = ((recon - images) ** 2).reshape(len(images), -1).mean(axis=1)
    return MetricResult.from_ci(bootstrap_ci(weighted_mean(values), len(values), n_boot, seed), LOWER, len(values))


def quarter_turns(inputs: np.ndarray, k: int, kind: str = "image") -> np.ndarray:
    """``inputs`` turned by k x 90 degrees about z: the last two axes of (n, C, ..., X, Y) images, the xyz rows of
    (n, F, N) point clouds (channels first; an intensity row is kept)."""
    if kind == "image":
        return np.ascontiguousarray(np.rot90(inputs, k, axes=(-2, -1)))
    if kind != "points":
        raise ValueError(f"inputs are 'image' or 'points', got {kind!r}")
    c, s = np.cos(k * np.pi / 2), np.sin(k * np.pi / 2)
    rot = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]]).round()
    out = np.array(inputs, dtype=np.float32)
    out[:, :3] = np.einsum("ij,njk->nik", rot, out[:, :3])
    return out


def rotation_invariance_error(
    encode: Callable[[np.ndarray], np.ndarray],
    inputs: np.ndarray,
    batch_size: int,
    n_boot: int,
    seed: int,
    kind: str = "image",
) -> MetricResult:
    """The reference's definition (module doc); ``batch_size``: the batches the Frobenius norms run over."""
    values, batch_ids = [], []
    for i, start in enumerate(range(0, len(inputs), batch_size)):
        x = inputs[start : start + batch_size]
        z0 = np.asarray(encode(x), dtype=float)
        for k in range(4):
            zr = z0 if k == 0 else np.asarray(encode(quarter_turns(x, k, kind)), dtype=float)
            denom = np.linalg.norm(z0) + np.linalg.norm(zr)
            values.append(np.linalg.norm(zr - z0) / denom if denom > 0 else 0.0)
            batch_ids.append(i)
    batch_ids = np.asarray(batch_ids)
    return MetricResult.from_ci(
        bootstrap_ci(weighted_mean(np.asarray(values)), len(values), n_boot, seed, batch_ids),
        LOWER,
        len(inputs),
        note=f"{batch_ids[-1] + 1} batch(es) of <= {batch_size} x 4 angles",
    )


def chamfer_sum(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per pair of clouds (n, N, 3) and (n, M, 3): sum_i min_j |a_i - b_j| + sum_j min_i |a_i - b_j| (cyto-dl's
    ChamferLoss, unsquared distances)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    out = np.empty(len(a))
    for i in range(len(a)):
        d = np.sqrt(np.maximum(((a[i][:, None, :] - b[i][None, :, :]) ** 2).sum(-1), 0.0))
        out[i] = d.min(1).sum() + d.min(0).sum()
    return out


def reconstruction_chamfer(
    reconstruct: Callable[[np.ndarray], np.ndarray], clouds: np.ndarray, n_boot: int, seed: int
) -> MetricResult:
    """``clouds`` (n, F, N) channels first (xyz in the first 3 rows); ``reconstruct`` -> (n, M, 3)."""
    target = np.asarray(clouds, dtype=float)[:, :3].transpose(0, 2, 1)
    values = chamfer_sum(np.asarray(reconstruct(clouds), dtype=float), target)
    return MetricResult.from_ci(bootstrap_ci(weighted_mean(values), len(values), n_boot, seed), LOWER, len(values))


def sinkhorn_geomloss(recon: np.ndarray, clouds: np.ndarray) -> np.ndarray:
    """Per pair of (n, M, 3) reconstructions and (n, N, 3) clouds: SamplesLoss("sinkhorn", p=2, blur=0.05)(recon,
    clouds), cyto-dl's GeomLoss as the reference calls it."""
    import torch
    from geomloss import SamplesLoss

    loss = SamplesLoss("sinkhorn", p=2, blur=0.05)
    with torch.no_grad():
        return (
            loss(
                torch.as_tensor(np.asarray(recon), dtype=torch.float32).contiguous(),
                torch.as_tensor(np.asarray(clouds), dtype=torch.float32).contiguous(),
            )
            .double()
            .numpy()
        )


def reconstruction_sinkhorn(
    reconstruct: Callable[[np.ndarray], np.ndarray], clouds: np.ndarray, n_boot: int, seed: int
) -> MetricResult:
    """``clouds`` (n, F, N) channels first; ``reconstruct`` -> (n, M, 3)."""
    target = np.asarray(clouds, dtype=float)[:, :3].transpose(0, 2, 1)
    values = sinkhorn_geomloss(np.asarray(reconstruct(clouds), dtype=float), target)
    return MetricResult.from_ci(bootstrap_ci(weighted_mean(values), len(values), n_boot, seed), LOWER, len(values))
