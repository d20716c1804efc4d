"""Geometry of pixel and voxel grids shared by the rotation-invariant models and the rotation metrics."""

from __future__ import annotations

import numpy as np


def inscribed_ball(shape: tuple[int, ...]) -> np.ndarray:
    """float32 1 inside the disk / ball inscribed in a grid of ``shape`` (centred between the middle pixels),
    0 outside: the part of an image that every rotation about the centre keeps on the grid, and a set that the
    grid's own rotations (quarter turns, the cube's 24) map onto itself exactly."""
    axes = [(np.arange(s) - (s - 1) / 2) / (s / 2) for s in shape]
    grids = np.meshgrid(*axes, indexing="ij")
    return (sum(g**2 for g in grids) <= 1.0).astype(np.float32)
