"""The ReStyle encoder on a pSp backbone (Richardson et al., CVPR 2021; Alaluf et al., ICCV 2021) and the noise
head of Wu et al. (MIDL 2022): W+ style codes ("stain") and per-layer noise maps ("morph") of a frozen StyleGAN2.

ReStyle refines iteratively: the encoder sees the image and the current reconstruction ``[x, y_prev]`` and
predicts a residual added to the current codes; it starts from the generator's average latent, ``y_0 =
G(w_avg)``. Written here (no torchvision, see the SSL drive); the units follow the papers' descriptions.
"""

from __future__ import annotations

import math
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from Engineering.Engines.WarpDrives.equalized import EqualLinear

from .config import ReStyleConfig


class GeneratorShape(Protocol):
    """What the encoder needs of the generator's configuration (StyleGAN2Config has it; the generator is given,
    by the registry's stylegan task, never imported from its family)."""

    channels: int
    size: int
    style_dim: int
    n_latent: int

    def noise_sizes(self) -> list[int]: ...


class SqueezeExcite(nn.Module):
    """Channel gates from globally pooled features (Hu et al., CVPR 2018)."""

    def __init__(self, ch: int, reduction: int = 16):
        super().__init__()
        mid = max(1, ch // reduction)
        self.fc = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(ch, mid, 1, bias=False),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid, ch, 1, bias=False),
            nn.Sigmoid(),
        )

    def forward(self, x):
        return x * self.fc(x)


def _norm(ch: int) -> nn.Module:
    return nn.InstanceNorm2d(ch, affine=True)


class IRSEUnit(nn.Module):
    """ArcFace's improved residual unit with squeeze-excitation (the pSp backbone): norm, conv, PReLU,
    strided conv, norm, SE; a max-pool or 1x1-conv shortcut."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.res = nn.Sequential(
            _norm(cin),
            nn.Conv2d(cin, cout, 3, 1, 1, bias=False),
            nn.PReLU(cout),
            nn.Conv2d(cout, cout, 3, stride, 1, bias=False),
            _norm(cout),
            SqueezeExcite(cout),
        )
        self.short = (
            nn.MaxPool2d(1, stride)
            if cin == cout
            else nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), _norm(cout))
        )

    def forward(self, x):
        return self.res(x) + self.short(x)


class BasicUnit(nn.Module):
    """ResNet's BasicBlock (He et al., CVPR 2016) with InstanceNorm."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.res = nn.Sequential(
            nn.Conv2d(cin, cout, 3, stride, 1, bias=False),
            _norm(cout),
            nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, 1, 1, bias=False),
            _norm(cout),
        )
        self.short = (
            nn.Identity()
            if stride == 1 and cin == cout
            else nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), _norm(cout))
        )

    def forward(self, x):
        return F.relu(self.res(x) + self.short(x))


class Map2Style(nn.Module):
    """pSp's map2style: strided 3x3 convolutions with leaky ReLU down to 1x1, then an equalised linear layer."""

    def __init__(self, cin: int, style_dim: int, spatial: int):
        super().__init__()
        layers, c = [], cin
        for _ in range(max(1, int(math.log2(spatial)))):
            layers += [nn.Conv2d(c, style_dim, 3, 2 if spatial > 1 else 1, 1), nn.LeakyReLU(0.2)]
            c = style_dim
        self.convs = nn.Sequential(*layers)
        self.linear = EqualLinear(style_dim, style_dim)

    def forward(self, x):
        return self.linear(self.convs(x).mean((2, 3)))


class ReStyleEncoder(nn.Module):
    """``[x, y_prev]`` (2C channels) -> residual W+ codes (B, n_latent, style_dim) and, with the noise head, one
    (B, 1, s, s) map per generator noise input."""

    def __init__(self, cfg: ReStyleConfig, gen: GeneratorShape):
        super().__init__()
        self.cfg, self.gen = cfg, gen
        unit = IRSEUnit if cfg.backbone == "irse" else BasicUnit
        w = cfg.width
        self.input = nn.Sequential(nn.Conv2d(2 * gen.channels, w, 3, 1, 1, bias=False), _norm(w), nn.PReLU(w))
        self.stages, cin, widths = nn.ModuleList(), w, [w]
        for k, n in enumerate(cfg.blocks):
            cout = w * min(2**k, 8)
            self.stages.append(
                nn.Sequential(*[unit(cin if j == 0 else cout, cout, 2 if j == 0 else 1) for j in range(n)])
            )
            cin = cout
            widths.append(cout)
        final = gen.size // 16
        self.styles = nn.ModuleList(Map2Style(cin, gen.style_dim, final) for _ in range(gen.n_latent))
        if cfg.noise_head:
            # each noise map from the finest feature map no coarser than it (features at size, size/2, ... /16)
            res = [gen.size // 2**k for k in range(5)]
            self.noise_src = [max(k for k, r in enumerate(res) if r >= s) for s in gen.noise_sizes()]
            self.noise = nn.ModuleList(nn.Conv2d(widths[k], 1, 3, 1, 1) for k in self.noise_src)

    def forward(self, x: torch.Tensor, y_prev: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor] | None]:
        feats = [self.input(torch.cat([x, y_prev], 1))]
        for stage in self.stages:
            feats.append(stage(feats[-1]))
        codes = torch.stack([head(feats[-1]) for head in self.styles], 1)
        if not self.cfg.noise_head:
            return codes, None
        noise = [
            F.adaptive_avg_pool2d(conv(feats[k]), s) if feats[k].shape[-1] != s else conv(feats[k])
            for conv, k, s in zip(self.noise, self.noise_src, self.gen.noise_sizes())
        ]
        return codes, noise


class ReStyleNet(nn.Module):
    """The encoder and the frozen generator it inverts (a StyleGAN2 ``Generator``: ``cfg``, ``make_noise`` and a
    forward from W+ codes and noise). ``invert`` runs the refinement; ``fixed_noise`` is the
    generator's noise when the noise head is off (a fixed draw, so a reconstruction is deterministic)."""

    def __init__(self, cfg: ReStyleConfig, generator: nn.Module):
        super().__init__()
        self.cfg = cfg
        self.encoder = ReStyleEncoder(cfg, generator.cfg)
        self.generator = generator.requires_grad_(False).eval()
        for i, t in enumerate(generator.make_noise(1, torch.Generator().manual_seed(0))):
            self.register_buffer(f"fixed_noise_{i}", t)

    def train(self, mode: bool = True):  # the generator stays in eval mode: it is not trained here
        super().train(mode)
        self.generator.eval()
        return self

    def fixed_noise(self, batch: int) -> list[torch.Tensor]:
        return [getattr(self, f"fixed_noise_{i}").expand(batch, -1, -1, -1) for i in range(self.generator.cfg.n_noise)]

    def start(self, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(codes, image) of the average latent: ReStyle's starting point."""
        g = self.generator
        codes = g.w_avg[None, None].expand(batch, g.n_latent, -1)
        with torch.no_grad():
            y0 = g.synthesis(codes[:1], self.fixed_noise(1)).expand(batch, -1, -1, -1)
        return codes, y0

    def step(self, x: torch.Tensor, codes: torch.Tensor, y_prev: torch.Tensor):
        """One refinement: (new codes, noise maps or None, reconstruction). Inputs are detached, so a loss on
        each step's output trains the encoder for that step alone (ReStyle back-propagates every iteration)."""
        delta, noise = self.encoder(x, y_prev.detach())
        codes = codes.detach() + delta
        y = self.generator.synthesis(codes, noise if noise is not None else self.fixed_noise(x.shape[0]))
        return codes, noise, y

    def invert(self, x: torch.Tensor, n_iters: int | None = None):
        """[(codes, noise, reconstruction)] of each refinement step; the last is the inversion."""
        codes, y = self.start(x.shape[0])
        out = []
        for _ in range(n_iters or self.cfg.n_iters):
            codes, noise, y = self.step(x, codes, y)
            out.append((codes, noise, y))
        return out
