"""The Earth Mover's distance between point clouds, as an entropic optimal-transport approximation: the debiased
Sinkhorn divergence of ``geomloss`` (Feydy et al., AISTATS 2019) with the squared Euclidean cost, which tends to
the squared 2-Wasserstein distance as the blur goes to 0 -- for two clouds of N equally weighted points, the mean
squared distance between the points of the best one-to-one matching (what Fan, Su & Guibas, CVPR 2017 train
point-set generators with), in the same units as the Chamfer distance. Unlike Chamfer, every point must be
matched to its own partner."""

from __future__ import annotations

import torch

from Engineering.errors import UserError


def earth_movers(a: torch.Tensor, b: torch.Tensor, blur: float = 0.05) -> torch.Tensor:
    """a (B, N, D), b (B, M, D) -> (B,): the squared 2-Wasserstein distance between the uniform clouds, by the
    debiased Sinkhorn divergence at ``blur`` (the coordinates' units; a bias of a few % at 0.05 voxels)."""
    try:
        from geomloss import SamplesLoss
    except ImportError:
        raise UserError("the Earth Mover's loss needs geomloss (pip install geomloss)") from None
    if a.ndim != 3 or b.ndim != 3 or a.shape[0] != b.shape[0] or a.shape[2] != b.shape[2]:
        raise ValueError(
            f"earth_movers needs (B, N, D) and (B, M, D) clouds, got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    # geomloss's p=2 cost is |x - y|^2 / 2: twice the divergence is the squared distance
    divergence = SamplesLoss("sinkhorn", p=2, blur=blur, scaling=0.9, backend="tensorized")
    return 2 * divergence(a.float().contiguous(), b.float().contiguous())
