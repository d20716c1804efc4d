"""The one block both halves repeat: complex (transposed) convolution -> complex BN -> complex activation."""

from __future__ import annotations

from torch import nn

from .activations import CReLU, ModReLU
from .batchnorm import ComplexBatchNorm
from .config import ComplexAEConfig
from .conv import ComplexConv, ComplexConvTranspose


def activation(config: ComplexAEConfig, channels: int) -> nn.Module:
    return ModReLU(channels, config.modrelu_bias) if config.activation == "modrelu" else CReLU()


def down_block(config: ComplexAEConfig, in_channels: int, out_channels: int) -> nn.Sequential:
    """Halve every side: kernel 4, stride 2, padding 1; no conv bias (the BN's shift replaces it)."""
    return nn.Sequential(
        ComplexConv(in_channels, out_channels, 4, stride=2, padding=1, bias=False, spatial_dims=config.spatial_dims),
        ComplexBatchNorm(out_channels, spatial_dims=config.spatial_dims),
        activation(config, out_channels),
    )


def up_block(config: ComplexAEConfig, in_channels: int, out_channels: int) -> nn.Sequential:
    """Double every side: transposed kernel 4, stride 2, padding 1."""
    return nn.Sequential(
        ComplexConvTranspose(
            in_channels, out_channels, 4, stride=2, padding=1, bias=False, spatial_dims=config.spatial_dims
        ),
        ComplexBatchNorm(out_channels, spatial_dims=config.spatial_dims),
        activation(config, out_channels),
    )
