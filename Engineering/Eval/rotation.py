"""Rotation invariance at arbitrary angles (model-dependent): this project's variant. Seed 003's reference tests only
the four 90° turns about z, relative to the latents' own norm (``invariance.rotation_invariance_error``, under the
reference's name); this one uses any angle, and scales by the spread between samples instead.

Each test sample is re-encoded under random rotations: in 2D any in-plane angle, in 3D a random rotation of
SO(3) (uniform, scipy's ``Rotation.random``), applied about the image centre by linear interpolation with the
inscribed disk / ball kept (the corners leave the grid). The per-sample value is the mean latent change
||z(Rx) - z(x)|| divided by the mean distance between two samples' latents (the between-sample spread), so 0 is
invariant and about 1 means a rotation moves a sample as far as another sample is. Point clouds (n, F, N) are
rotated exactly, about the origin (the volume's centre in our clouds' coordinates). Lower is better when the
labels of interest do not depend on orientation. For models with a pose output (rotation matrices), the pose
equivariance error is the mean angle between pose(Rx) and R pose(x), in degrees; lower is better.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy.ndimage import affine_transform
from scipy.spatial.transform import Rotation

from Engineering.Eval.bootstrap import bootstrap_ci, weighted_mean
from Engineering.Eval.result import LOWER, MetricResult
from Engineering.Science.grids import inscribed_ball

METRICS = {
    "rotation_invariance": (
        LOWER,
        "Project variant (not the reference's rotation_invariance_error): latent change "
        "under random rotations (any angle in 2D, random SO(3) in 3D) over the "
        "between-sample latent spread. Lower is better (more invariant).",
    ),
    "pose_equivariance_error": (LOWER, "Mean angle (degrees) between pose(R x) and R pose(x). Lower is better."),
}


def random_rotations(dim: int, n: int, seed: int) -> np.ndarray:
    """(n, dim, dim) rotation matrices: uniform angles in 2D, uniform on SO(3) in 3D."""
    rng = np.random.default_rng(seed)
    if dim == 2:
        a = rng.uniform(0, 2 * np.pi, n)
        return np.stack([np.stack([np.cos(a), -np.sin(a)], 1), np.stack([np.sin(a), np.cos(a)], 1)], 1)
    if dim == 3:
        return Rotation.random(n, random_state=rng).as_matrix()
    raise ValueError(f"rotations are 2D or 3D, got dim {dim}")


def ball_mask(shape: tuple[int, ...]) -> np.ndarray:
    """1 inside the disk / ball inscribed in the spatial grid ``shape`` (Science/grids)."""
    return inscribed_ball(tuple(shape))


def rotate(images: np.ndarray, rot: np.ndarray) -> np.ndarray:
    """Rotate (n, C, *S) images about the centre of S (dim = rot's size) by ``rot``, linear interpolation, zeros
    outside; y(u) = x(R^T u), the convention of the grid groups (``WarpDrives/RotInv/groups``)."""
    dim = rot.shape[0]
    spatial = images.shape[-dim:]
    centre = (np.asarray(spatial) - 1) / 2
    inv = rot.T  # affine_transform maps output coordinates to input ones
    offset = centre - inv @ centre
    out = np.empty_like(images, dtype=np.float32)
    flat = images.reshape(-1, *spatial)
    res = out.reshape(-1, *spatial)
    for i in range(len(flat)):
        res[i] = affine_transform(flat[i].astype(np.float32), inv, offset=offset, order=1, mode="constant")
    return out


def rotate_points(clouds: np.ndarray, rot: np.ndarray) -> np.ndarray:
    """Rotate (n, F, N) clouds (channels first, xyz in the first 3 rows, about the origin: the volume's centre)
    by ``rot``; an intensity row is kept."""
    out = np.array(clouds, dtype=np.float32)
    out[:, :3] = np.einsum("ij,njk->nik", rot, out[:, :3])
    return out


def _rotator(shape: tuple[int, ...], dim: int, kind: str):
    """(masked inputs, x -> R x) for images (the inscribed ball kept) or point clouds."""
    if kind == "points":
        return (lambda x: x.astype(np.float32)), rotate_points
    if kind != "image":
        raise ValueError(f"inputs are 'image' or 'points', got {kind!r}")
    mask = ball_mask(shape[-dim:])
    return (lambda x: (x * mask).astype(np.float32)), (lambda x, rot: rotate(x, rot) * mask)


def pointwise_rotation_invariance(
    encode: Callable[[np.ndarray], np.ndarray],
    images: np.ndarray,
    dim: int,
    n_rotations: int = 4,
    seed: int = 0,
    kind: str = "image",
) -> np.ndarray:
    prepare, turn = _rotator(images.shape, dim, kind)
    x = prepare(images)
    z0 = np.asarray(encode(x), dtype=float)
    d = np.linalg.norm(z0[:, None] - z0[None], axis=-1)
    spread = d.sum() / (len(z0) * (len(z0) - 1))
    if not spread > 0:
        raise ValueError("all latents are equal: the between-sample spread is 0")
    moves = []
    for rot in random_rotations(dim, n_rotations, seed):
        zr = np.asarray(encode(turn(x, rot)), dtype=float)
        moves.append(np.linalg.norm(zr - z0, axis=1))
    return np.mean(moves, axis=0) / spread


def rotation_invariance(
    encode, images: np.ndarray, dim: int, n_boot: int, seed: int, n_rotations: int = 4, kind: str = "image"
) -> MetricResult:
    values = pointwise_rotation_invariance(encode, images, dim, n_rotations, seed, kind)
    return MetricResult.from_ci(
        bootstrap_ci(weighted_mean(values), len(values), n_boot, seed),
        LOWER,
        len(values),
        note=f"{n_rotations} random {'angles' if dim == 2 else 'SO(3) rotations'} per sample",
    )


def pose_equivariance_error(
    pose: Callable[[np.ndarray], np.ndarray],
    images: np.ndarray,
    dim: int,
    n_boot: int,
    seed: int,
    n_rotations: int = 4,
    kind: str = "image",
    rotations: np.ndarray | None = None,
) -> MetricResult:
    """``pose(images) -> (n, dim, dim)`` rotation matrices; the angle of pose(Rx)^T R pose(x) per sample, over
    ``rotations`` (default: ``n_rotations`` random ones)."""
    prepare, turn = _rotator(images.shape, dim, kind)
    x = prepare(images)
    p0 = np.asarray(pose(x), dtype=float)
    errs = []
    rotations = random_rotations(dim, n_rotations, seed) if rotations is None else rotations
    for rot in rotations:
        pr = np.asarray(pose(turn(x, rot)), dtype=float)
        rel = np.einsum("nji,jk,nkl->nil", pr, rot, p0)  # identity when pose(Rx) = R pose(x)
        # the angle of rel from ||rel - I||_F = 2 sqrt(2) sin(angle / 2) (2D and 3D): accurate near 0, unlike arccos
        dev = np.linalg.norm(rel - np.eye(dim), axis=(1, 2)) / (2 * np.sqrt(2))
        errs.append(np.degrees(2 * np.arcsin(np.clip(dev, 0, 1))))
    values = np.mean(errs, axis=0)
    return MetricResult.from_ci(
        bootstrap_ci(weighted_mean(values), len(values), n_boot, seed),
        LOWER,
        len(values),
        note=f"{len(rotations)} rotations per sample",
    )
