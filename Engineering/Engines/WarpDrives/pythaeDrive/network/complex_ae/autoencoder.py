"""Complex encoder (complex image -> real latent) and complex decoder (real latent -> complex image), 2D and 3D.

Built from complex convolutions, complex batch normalisation and a complex activation (Trabelsi et al., "Deep Complex
Networks", ICLR 2018; modReLU of Arjovsky et al., ICML 2016), on the layout of the ancestor's complex encoder
(GlastonburyGroup/ImLatent): levels of kernel-4 stride-2 convolutions, then a linear map of the flattened features.
The ancestor's latent was complex; ours is real, because the output contract (emb.h5, the latent tables, the
benchmarks, GWAS) holds real float32 latents.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from .blocks import down_block, up_block
from .checks import ComplexAEError, require_complex
from .config import ComplexAEConfig
from .conv import ComplexConvTranspose, stack_parts, unstack_parts


class ComplexEncoding(NamedTuple):
    """The encoder's output: the real latent (the mean, for a VAE head) and, for a VAE head, its log-variance."""

    embedding: torch.Tensor
    log_var: torch.Tensor | None


class ComplexEncoder(nn.Module):
    """Complex image (N, C, [S,] X, Y), complex dtype -> real latent (N, latent_dim), the parameters' real dtype.

    How complex features become a real latent: the deepest complex feature map is flattened and split into its real
    and imaginary parts, concatenated (2 * feature_numel real values), and a real linear layer maps them to the latent.
    Why Re/Im and not magnitude/phase: (Re, Im) is a linear, smooth, one-to-one map of C onto R^2, so a real linear
    layer on it is the most general R-linear map of the complex features (complex-linear and conjugate-linear maps
    included) and loses nothing; the phase has a branch cut at +-pi and is undefined (with an unbounded gradient)
    at |z| = 0, which would make the latent jump for nearly equal inputs. The modReLU before it already gives the
    network a magnitude nonlinearity. Why flatten and not pool: an autoencoder's latent must say WHERE things are;
    global pooling would discard the layout the decoder has to rebuild (the ancestor flattens too).

    With ``config.variational`` the same linear layer has 2 * latent_dim outputs: mu and logvar (both real), for
    complex_vae and complex_factor_vae; the reparameterisation is the model's job, not the encoder's.
    """

    def __init__(self, config: ComplexAEConfig) -> None:
        super().__init__()
        self.config = config
        channels = (config.in_channels, *config.widths)
        self.blocks = nn.Sequential(*(down_block(config, c_in, c_out) for c_in, c_out in zip(channels, channels[1:])))
        self.head = nn.Linear(2 * config.feature_numel, config.latent_dim * (2 if config.variational else 1))

    def forward(self, x: torch.Tensor) -> ComplexEncoding:
        config = self.config
        require_complex(x, config.spatial_dims, "ComplexEncoder")
        if tuple(x.shape[1:]) != (config.in_channels, *config.input_size):
            raise ComplexAEError(
                f"ComplexEncoder expects samples of shape {(config.in_channels, *config.input_size)}"
                f" (channels, *input_size), got {tuple(x.shape[1:])}"
            )
        features = self.blocks(x)
        out = self.head(stack_parts(features.flatten(1)))
        if config.variational:
            mu, log_var = out.chunk(2, dim=1)
            return ComplexEncoding(mu, log_var)
        return ComplexEncoding(out, None)


class ComplexDecoder(nn.Module):
    """Real latent (N, latent_dim) -> complex image (N, C, [S,] X, Y) of the encoder's input shape.

    A real linear layer gives 2 * feature_numel values, read as the real and imaginary parts of the deepest complex
    feature map (the inverse of the encoder's Re/Im split); then transposed-convolution levels mirror the encoder's,
    the last one (to the image channels, with a complex bias) without BN or activation, so the output can take any
    complex value.
    """

    def __init__(self, config: ComplexAEConfig) -> None:
        super().__init__()
        self.config = config
        self.head = nn.Linear(config.latent_dim, 2 * config.feature_numel)
        widths = config.widths[::-1]
        self.blocks = nn.Sequential(*(up_block(config, c_in, c_out) for c_in, c_out in zip(widths, widths[1:])))
        self.out = ComplexConvTranspose(
            widths[-1], config.in_channels, 4, stride=2, padding=1, spatial_dims=config.spatial_dims
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        config = self.config
        if z.is_complex() or not z.is_floating_point() or z.dim() != 2 or z.shape[1] != config.latent_dim:
            raise ComplexAEError(
                f"ComplexDecoder expects a real latent of shape (N, {config.latent_dim}), got "
                f"{tuple(z.shape)} {z.dtype}"
            )
        real = self.head(z)
        features = unstack_parts(real).view(z.shape[0], config.widths[-1], *config.feature_size)
        return self.out(self.blocks(features))
