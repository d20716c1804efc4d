"""Cosine nearest neighbours that skip the sample itself and, optionally, its group.

With groups (e.g. slices of one patient) a neighbour from the same group says
nothing about label or batch structure across subjects, so such neighbours are
skipped in mixing metrics exactly as group-aware CV skips them in the probes.
"""

from __future__ import annotations

import numpy as np
from sklearn.neighbors import NearestNeighbors


def cosine_neighbours(Z: np.ndarray, k: int, groups: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(indices, valid) of shape (n, k): the k nearest other samples by cosine distance.

    ``valid`` is False where fewer than k eligible neighbours exist (tiny data or huge groups).
    """
    n = len(Z)
    extra = 1 if groups is None else int(np.bincount(groups).max())
    m = min(n, k + extra)
    _, idx = NearestNeighbors(n_neighbors=m, metric="cosine", algorithm="brute").fit(Z).kneighbors(Z)
    own = np.arange(n)[:, None]
    ok = idx != own
    if groups is not None:
        ok &= groups[idx] != groups[:, None]
    # Stable sort keeps the distance order among the eligible neighbours.
    order = np.argsort(~ok, axis=1, kind="stable")[:, :k]
    idx = np.take_along_axis(idx, order, axis=1)
    ok = np.take_along_axis(ok, order, axis=1)
    if idx.shape[1] < k:  # fewer samples than k
        pad = k - idx.shape[1]
        idx = np.pad(idx, ((0, 0), (0, pad)))
        ok = np.pad(ok, ((0, 0), (0, pad)))
    return idx, ok
