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
CIs bootstrap the per-sample values.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from Engineering.Eval.bootstrap import bootstrap_ci, weighted_mean
from Engineering.Eval.result import LOWER, MetricResult

METRICS = {
    "rotation_sensitivity": (LOWER, "Relative latent change under 90° rotations and flips, "
                                    "||z_r - z_0|| / (||z_0|| + ||z_r||). Lower is better (more invariant)."),
    "reconstruction_mse": (LOWER, "Mean squared reconstruction error per sample. Lower is better."),
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


def rotation_sensitivity(encode: Callable[[np.ndarray], np.ndarray], images: np.ndarray, n_boot: int,
                         seed: int) -> MetricResult:
    values = pointwise_rotation_sensitivity(encode, images)
    return MetricResult.from_ci(bootstrap_ci(weighted_mean(values), len(values), n_boot, seed), LOWER, len(values))


def reconstruction_mse(reconstruct: Callable[[np.ndarray], np.ndarray], images: np.ndarray, n_boot: int,
                       seed: int) -> MetricResult:
    recon = np.asarray(reconstruct(images), dtype=float)
    values = ((recon - images) ** 2).reshape(len(images), -1).mean(axis=1)
    return MetricResult.from_ci(bootstrap_ci(weighted_mean(values), len(values), n_boot, seed), LOWER, len(values))
