"""A seeded random subset of samples for metrics whose cost grows as n^2.

Neighbour searches and silhouettes compare every pair of samples; above a few
thousand samples a random subset estimates the same average at a fraction of
the cost. The subset is seeded, so every run is scored on the same samples.
"""

from __future__ import annotations

import numpy as np

MAX_POINTS = 5000


def subsample_indices(n: int, seed: int, max_points: int = MAX_POINTS) -> np.ndarray | None:
    """Sorted indices of a random subset of ``max_points`` samples, or None when n is small enough."""
    if n <= max_points:
        return None
    return np.sort(np.random.default_rng(seed).choice(n, max_points, replace=False))


def subset_note(n: int, max_points: int = MAX_POINTS) -> str:
    return f"on a random subset of {max_points} of {n} samples"
