"""The Chamfer distance between point clouds (Fan, Su & Guibas, CVPR 2017): the mean squared distance from each
point to its nearest neighbour in the other cloud, both ways. Symmetric, zero for the same set of points in any
order; not a metric (no triangle inequality), but differentiable almost everywhere."""

from __future__ import annotations

import torch


def chamfer_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a (B, N, D), b (B, M, D) -> (B,): mean_i min_j |a_i - b_j|^2 + mean_j min_i |a_i - b_j|^2."""
    if a.ndim != 3 or b.ndim != 3 or a.shape[0] != b.shape[0] or a.shape[2] != b.shape[2]:
        raise ValueError(
            f"chamfer_distance needs (B, N, D) and (B, M, D) clouds, got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    d = torch.cdist(a, b).pow(2)  # (B, N, M)
    return d.min(2).values.mean(1) + d.min(1).values.mean(1)
