"""Configuration of the complex-valued autoencoder networks (encoder and decoder of complex_ae / complex_vae /
complex_factor_vae)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from Engineering.Engines.WarpDrives.errors import positive_int

from .checks import ComplexAEError, check_spatial_dims

ACTIVATIONS = ("modrelu", "crelu")


@dataclass
class ComplexAEConfig:
    """spatial_dims: 2 (images C x X x Y) or 3 (volumes C x S x X x Y), a plain argument as in MONAI.
    in_channels: complex image channels.
    input_size: (X, Y) in 2D, (S, X, Y) in 3D; each side divisible by 2**len(widths).
    widths: complex feature maps per level; each level halves every side (kernel 4, stride 2, padding 1, as the
        ancestor's complex encoder), so len(widths) is the number of levels.
    latent_dim: the REAL latent (see ``ComplexEncoder`` for how complex features become real).
    activation: "modrelu" (Arjovsky et al., 2016; the ancestor's choice) or "crelu" (Trabelsi et al., 2018).
    modrelu_bias: the initial modReLU bias (negative: a small dead zone around 0).
    variational: the encoder also returns a log-variance (a VAE head: mu and logvar, both real).
    """

    spatial_dims: int = 2
    in_channels: int = 1
    input_size: tuple[int, ...] = (64, 64)
    widths: tuple[int, ...] = (16, 32, 64, 128)
    latent_dim: int = 64
    activation: str = "modrelu"
    modrelu_bias: float = -0.1
    variational: bool = False

    def __post_init__(self) -> None:
        check_spatial_dims(self.spatial_dims)
        positive_int("in_channels", self.in_channels, ComplexAEError)
        positive_int("latent_dim", self.latent_dim, ComplexAEError)
        self.input_size = tuple(self.input_size)
        self.widths = tuple(self.widths)
        if not self.widths:
            raise ComplexAEError("widths must name at least one level")
        for width in self.widths:
            positive_int("each of widths", width, ComplexAEError)
        if len(self.input_size) != self.spatial_dims:
            raise ComplexAEError(
                f"input_size must have {self.spatial_dims} sides for spatial_dims="
                f"{self.spatial_dims}, got {self.input_size}"
            )
        factor = 2 ** len(self.widths)
        for side in self.input_size:
            positive_int("each side of input_size", side, ComplexAEError)
            if side % factor:
                raise ComplexAEError(
                    f"input_size {self.input_size}: each side must be divisible by 2**levels = "
                    f"{factor} (levels = len(widths) = {len(self.widths)})"
                )
        if self.activation not in ACTIVATIONS:
            raise ComplexAEError(f"activation must be one of {ACTIVATIONS}, got {self.activation!r}")
        self.modrelu_bias = float(self.modrelu_bias)
        self.variational = bool(self.variational)

    @property
    def feature_size(self) -> tuple[int, ...]:
        """The sides of the deepest complex feature map."""
        return tuple(side // 2 ** len(self.widths) for side in self.input_size)

    @property
    def feature_numel(self) -> int:
        """Complex values in one sample's deepest feature map (widths[-1] x feature_size)."""
        return self.widths[-1] * math.prod(self.feature_size)
