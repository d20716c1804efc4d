"""Equalised learning rate (Karras et al., "Progressive Growing of GANs", ICLR 2018; as StyleGAN2 uses it): weights
drawn from N(0, 1) and scaled at run time by He's constant, and the fused bias + leaky ReLU with gain sqrt(2).
Shared by the StyleGAN2 generator/discriminator and the ReStyle encoder's style heads (families never import each
other)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

LRELU_GAIN = math.sqrt(2.0)


def bias_lrelu(x: torch.Tensor, bias: torch.Tensor, slope: float = 0.2, gain: float = LRELU_GAIN) -> torch.Tensor:
    """``leaky_relu(x + bias) * gain`` with the bias broadcast over channel axis 1."""
    shape = (1, -1) + (1,) * (x.ndim - 2)
    return F.leaky_relu(x + bias.view(shape), slope) * gain


class EqualLinear(nn.Module):
    """A linear layer with equalised learning rate; ``lr_mul`` scales its effective learning rate (0.01 in the
    mapping network)."""

    def __init__(self, in_dim: int, out_dim: int, bias_init: float = 0.0, lr_mul: float = 1.0, activate: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_dim, in_dim) / lr_mul)
        self.bias = nn.Parameter(torch.full((out_dim,), float(bias_init) / lr_mul))
        self.scale, self.lr_mul, self.activate = lr_mul / math.sqrt(in_dim), lr_mul, activate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.activate:
            return bias_lrelu(F.linear(x, self.weight * self.scale), self.bias * self.lr_mul)
        return F.linear(x, self.weight * self.scale, self.bias * self.lr_mul)
