"""Point clouds from 3D images: the second input kind (DESIGN "Data contract"). A cloud is an (N, 4) float32
array (x, y, z, intensity) in voxel units about the volume's centre, stored under the same
patient/field/instance/key path as the image it came from (or an (N, 3) array without intensity).

Sampling is intensity-weighted (as seed 003's preprocessing samples structure channels): voxels above
``threshold`` (a fraction of the volume's maximum) are drawn with probability proportional to their intensity
above it, with replacement, and each point is jittered uniformly inside its voxel, so a fixed N describes any
volume; with a mask, voxels inside it are drawn uniformly and the intensity column is the image's.
"""

from __future__ import annotations

import numpy as np

from Engineering.io.read_budget import nbytes


def sampling_bytes(volume_shape: tuple[int, ...], n_points: int) -> int:
    """What :func:`sample_point_cloud` allocates, near enough, for the memory check before a volume is read: five
    float64 copies of the volume (itself, its weights, their clip and normalised copies, the sampler's cumulative
    sum) and about twenty float64 numbers per point (indices, coordinates, jitter, the stacked cloud)."""
    return 5 * nbytes(volume_shape, np.float64) + 20 * 8 * int(n_points)


def sample_point_cloud(
    volume: np.ndarray, n_points: int, rng: np.random.Generator, threshold: float = 0.1, mask: np.ndarray | None = None
) -> np.ndarray:
    """(D, H, W) volume -> (n_points, 4) float32 cloud; ValueError naming the problem when nothing is above the
    threshold (or inside the mask)."""
    vol = np.asarray(volume, dtype=np.float64)
    if vol.ndim != 3:
        raise ValueError(f"point clouds are sampled from 3D volumes, got shape {vol.shape}")
    if not np.isfinite(vol).all():
        raise ValueError("the volume holds NaN or infinite values")
    if mask is not None:
        weights = (np.asarray(mask) > 0).astype(np.float64)
        if not weights.any():
            raise ValueError("the mask is empty")
    else:
        top = vol.max()
        weights = np.clip(vol - threshold * top, 0, None) if top > 0 else np.zeros_like(vol)
        if not weights.any():
            raise ValueError(f"no voxel is above {threshold:g} of the maximum ({top:g})")
    flat = weights.ravel() / weights.sum()
    idx = rng.choice(flat.size, size=n_points, replace=True, p=flat)
    coords = np.stack(np.unravel_index(idx, vol.shape), 1).astype(np.float64)
    intensity = vol.ravel()[idx]
    coords += rng.uniform(-0.5, 0.5, coords.shape)
    coords -= (np.asarray(vol.shape) - 1) / 2
    return np.concatenate([coords, intensity[:, None]], 1).astype(np.float32)
