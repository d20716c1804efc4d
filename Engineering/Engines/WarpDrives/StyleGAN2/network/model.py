"""StyleGAN2 generator and residual discriminator (Karras et al., CVPR 2020, config F), any channel count."""

from __future__ import annotations

import random

import torch
from torch import nn

from .config import StyleGAN2Config
from .layers import ConvLayer, EqualLinear, ResBlock, StyledConv, ToImage, minibatch_stddev


class MappingNetwork(nn.Sequential):
    """z -> w: pixel norm, then ``n_mlp`` equalised linear layers with leaky ReLU at a 0.01 learning rate."""

    def __init__(self, style_dim: int, n_mlp: int, lr_mul: float):
        super().__init__(*[EqualLinear(style_dim, style_dim, lr_mul=lr_mul, activate=True) for _ in range(n_mlp)])

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return super().forward(z * torch.rsqrt(z.pow(2).mean(1, keepdim=True) + 1e-8))


class Generator(nn.Module):
    """Mapping network + synthesis network: a learned 4x4 constant, two styled convolutions per resolution (the
    first upsamples), per-layer noise, and an image output at every resolution summed through upsampling skips.

    ``w_avg`` tracks the mean of w over training (the truncation centre, and ReStyle's starting code).
    """

    def __init__(self, cfg: StyleGAN2Config):
        super().__init__()
        self.cfg = cfg
        sd, bk = cfg.style_dim, cfg.blur_kernel
        self.mapping = MappingNetwork(sd, cfg.n_mlp, cfg.lr_mlp)
        c4 = cfg.width(4)
        self.const = nn.Parameter(torch.randn(1, c4, 4, 4))
        self.conv1 = StyledConv(c4, c4, sd, blur_kernel=bk)
        self.to_img1 = ToImage(c4, cfg.channels, sd, upsample=False)
        self.convs, self.to_imgs = nn.ModuleList(), nn.ModuleList()
        in_ch = c4
        for r in range(3, cfg.log_size + 1):
            out_ch = cfg.width(2**r)
            self.convs.append(StyledConv(in_ch, out_ch, sd, upsample=True, blur_kernel=bk))
            self.convs.append(StyledConv(out_ch, out_ch, sd, blur_kernel=bk))
            self.to_imgs.append(ToImage(out_ch, cfg.channels, sd, blur_kernel=bk))
            in_ch = out_ch
        self.register_buffer("w_avg", torch.zeros(sd))

    @property
    def n_latent(self) -> int:
        return self.cfg.n_latent

    def make_noise(self, batch: int = 1, generator: torch.Generator | None = None) -> list[torch.Tensor]:
        """One N(0, 1) map per noise input (``cfg.noise_sizes()``)."""
        dev = self.const.device
        return [torch.randn(batch, 1, s, s, device=dev, generator=generator) for s in self.cfg.noise_sizes()]

    @torch.no_grad()
    def update_w_avg(self, w: torch.Tensor, beta: float = 0.995) -> None:
        self.w_avg.lerp_(w.detach().mean(0), 1 - beta)

    @torch.no_grad()
    def mean_latent(self, n: int = 4096) -> torch.Tensor:
        """The mean w of ``n`` random z (an estimate of ``w_avg`` for a generator trained elsewhere)."""
        return self.mapping(torch.randn(n, self.cfg.style_dim, device=self.const.device)).mean(0)

    def styles(
        self, z: torch.Tensor, z2: torch.Tensor | None = None, truncation: float = 1.0, crossover: int | None = None
    ) -> torch.Tensor:
        """W+ codes (B, n_latent, style_dim) from z, with ``z2``'s styles from layer ``crossover`` on (style
        mixing; a random crossover if None) and truncation towards ``w_avg`` (psi = ``truncation``)."""
        n = self.n_latent
        w = self.mapping(z)
        ws = w[:, None].expand(-1, n, -1)
        if z2 is not None:
            w2 = self.mapping(z2)
            k = random.randint(1, n - 1) if crossover is None else crossover
            ws = torch.cat([ws[:, :k], w2[:, None].expand(-1, n - k, -1)], 1)
        if truncation != 1.0:
            ws = self.w_avg.lerp(ws, truncation)
        return ws

    def synthesis(self, ws: torch.Tensor, noise: list[torch.Tensor] | None = None) -> torch.Tensor:
        """The image of W+ codes ``ws`` (B, n_latent, style_dim); ``noise`` as ``make_noise`` (random if None)."""
        if ws.ndim != 3 or ws.shape[1:] != (self.n_latent, self.cfg.style_dim):
            raise ValueError(f"ws must be (B, {self.n_latent}, {self.cfg.style_dim}), got {tuple(ws.shape)}")
        noise = noise if noise is not None else [None] * self.cfg.n_noise
        x = self.const.expand(ws.shape[0], -1, -1, -1)
        x = self.conv1(x, ws[:, 0], noise[0])
        img = self.to_img1(x, ws[:, 1])
        for i, to_img in enumerate(self.to_imgs):
            x = self.convs[2 * i](x, ws[:, 2 * i + 1], noise[2 * i + 1])
            x = self.convs[2 * i + 1](x, ws[:, 2 * i + 2], noise[2 * i + 2])
            img = to_img(x, ws[:, 2 * i + 3], img)
        return img

    def forward(
        self,
        z: torch.Tensor,
        z2: torch.Tensor | None = None,
        truncation: float = 1.0,
        noise: list[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        return self.synthesis(self.styles(z, z2, truncation), noise)


class Discriminator(nn.Module):
    """FromRGB (any channel count), residual blocks down to 4x4, minibatch standard deviation, a 3x3 convolution
    and two linear layers to one logit per image."""

    def __init__(self, cfg: StyleGAN2Config):
        super().__init__()
        self.cfg = cfg
        bk = cfg.blur_kernel
        layers = [ConvLayer(cfg.channels, cfg.width(cfg.size), 1)]
        for r in range(cfg.log_size, 2, -1):
            layers.append(ResBlock(cfg.width(2**r), cfg.width(2 ** (r - 1)), blur_kernel=bk))
        self.blocks = nn.Sequential(*layers)
        c4 = cfg.width(4)
        self.final_conv = ConvLayer(c4 + 1, c4, 3)
        self.final = nn.Sequential(EqualLinear(c4 * 16, c4, activate=True), EqualLinear(c4, 1))

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        if img.shape[1:] != (self.cfg.channels, self.cfg.size, self.cfg.size):
            raise ValueError(
                f"images must be (B, {self.cfg.channels}, {self.cfg.size}, {self.cfg.size}), got {tuple(img.shape)}"
            )
        x = self.final_conv(minibatch_stddev(self.blocks(img)))
        return self.final(x.flatten(1))


__all__ = ["Generator", "Discriminator", "MappingNetwork"]
