"""StyleGAN2's losses and regularisers (Karras et al., CVPR 2020): the non-saturating logistic GAN loss
(Goodfellow et al., 2014), lazy R1 (Mescheder et al., ICML 2018) and lazy path-length regularisation."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def d_logistic_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """softplus(-D(x)) + softplus(D(G(z))), averaged: the discriminator's side of the logistic loss."""
    return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()


def g_nonsaturating_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """softplus(-D(G(z))), averaged: the generator maximises log D rather than minimising log(1 - D)."""
    return F.softplus(-fake_logits).mean()


def r1_penalty(real_logits: torch.Tensor, real_img: torch.Tensor) -> torch.Tensor:
    """E ||grad_x D(x)||^2 on real images (``real_img`` must require grad and have produced ``real_logits``).
    The training loss is gamma / 2 * this, times the lazy interval when applied every k steps."""
    (grad,) = torch.autograd.grad(real_logits.sum(), real_img, create_graph=True)
    return grad.pow(2).flatten(1).sum(1).mean()


def path_length_penalty(
    fake_img: torch.Tensor, ws: torch.Tensor, mean_length: torch.Tensor, decay: float = 0.01
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(penalty, new running mean, per-sample lengths) of the path-length regulariser: the Jacobian-vector norm
    ||J_w^T y||, y ~ N(0, I) / sqrt(H W), should be the same for every w (a smooth, well-conditioned mapping).
    ``ws`` (B, n_latent, style_dim) must require grad and have produced ``fake_img``."""
    noise = torch.randn_like(fake_img) / math.sqrt(fake_img.shape[2] * fake_img.shape[3])
    (grad,) = torch.autograd.grad((fake_img * noise).sum(), ws, create_graph=True)
    lengths = grad.pow(2).sum(2).mean(1).sqrt()
    new_mean = mean_length + decay * (lengths.detach().mean() - mean_length)
    return (lengths - new_mean).pow(2).mean(), new_mean, lengths
