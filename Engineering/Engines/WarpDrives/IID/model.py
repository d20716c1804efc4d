"""The IID predictor of Wu et al. (MIDL 2022): a ResNet classifier whose stages receive the ReStyle encoder's noise
maps ("morph") and whose pooled features are joined by features of the style codes ("stain"), with a CE head
and an ArcFace head (Deng et al., CVPR 2019)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from Engineering.Engines.WarpDrives.SSL.model import BasicBlock

from .config import IIDConfig


class NoiseInjection(nn.Module):
    """``h + Dropout(alpha * n)``: alpha (one per channel) starts at 0, so the baseline is where training starts."""

    def __init__(self, ch: int, p: float):
        super().__init__()
        self.alpha = nn.Parameter(torch.zeros(1, ch, 1, 1))
        self.drop = nn.Dropout(p)

    def forward(self, h: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
        if n.shape[-2:] != h.shape[-2:]:
            n = F.interpolate(n, size=h.shape[-2:], mode="bilinear", align_corners=False)
        return h + self.drop(self.alpha * n)


class IIDNet(nn.Module):
    """``forward(x, codes, noise)`` -> {"emb", "logits", "cos"}: the embedding, the CE head's logits and the
    cosine of the embedding to each class centre (ArcFace's head; ``arcface_logits`` adds the margin)."""

    def __init__(self, cfg: IIDConfig):
        super().__init__()
        self.cfg = cfg
        w = cfg.width
        self.stem = nn.Sequential(nn.Conv2d(cfg.in_channels, w, 3, 1, 1, bias=False), nn.BatchNorm2d(w),
                                  nn.ReLU(inplace=True))
        self.stages, cin = nn.ModuleList(), w
        for k, n in enumerate(cfg.blocks):
            cout = w * 2 ** k
            self.stages.append(nn.Sequential(*[BasicBlock(cin if j == 0 else cout, cout, 2 if (j == 0 and k) else 1,
                                                          False) for j in range(n)]))
            cin = cout
        if cfg.use_noise:
            self.inject = nn.ModuleList(NoiseInjection(w * 2 ** k, cfg.dropout) for k in range(len(cfg.blocks)))
        feat = cin
        if cfg.use_style:
            self.style = nn.Sequential(nn.Conv1d(cfg.n_latent, cfg.style_mix, 1), nn.Flatten(),
                                       nn.BatchNorm1d(cfg.style_mix * cfg.style_dim), nn.LeakyReLU(0.2),
                                       nn.Dropout(cfg.dropout))
            feat += cfg.style_mix * cfg.style_dim
        self.neck = nn.Sequential(nn.Linear(feat, cfg.emb_dim), nn.BatchNorm1d(cfg.emb_dim), nn.ReLU(inplace=True))
        self.head = nn.Linear(cfg.emb_dim, cfg.n_classes)
        self.centres = nn.Parameter(torch.randn(cfg.n_classes, cfg.emb_dim) / math.sqrt(cfg.emb_dim))

    @staticmethod
    def _noise_for(noise: list[torch.Tensor], side: int) -> torch.Tensor:
        """The mean of the noise maps at ``side`` (the generator has two per resolution), else the closest."""
        same = [n for n in noise if n.shape[-1] == side]
        if not same:
            same = [min(noise, key=lambda n: abs(math.log2(n.shape[-1] / side)))]
        return torch.stack(same).mean(0)

    def forward(self, x: torch.Tensor, codes: torch.Tensor | None = None,
                noise: list[torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        if self.cfg.use_noise and noise is None:
            raise ValueError("this predictor injects noise maps (use_noise): pass the encoder's noise")
        if self.cfg.use_style and codes is None:
            raise ValueError("this predictor reads style codes (use_style): pass the encoder's codes")
        h = self.stem(x)
        for k, stage in enumerate(self.stages):
            h = stage(h)
            if self.cfg.use_noise:
                h = self.inject[k](h, self._noise_for(noise, h.shape[-1]))
        feats = [h.mean((2, 3))]
        if self.cfg.use_style:
            feats.append(self.style(codes))
        emb = self.neck(torch.cat(feats, 1))
        cos = F.linear(F.normalize(emb), F.normalize(self.centres))
        return {"emb": emb, "logits": self.head(emb), "cos": cos}

    def arcface_logits(self, cos: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """s * cos(theta + m) for the target class, s * cos(theta) for the others. Past theta = pi - m the margin
        would make cos(theta + m) increase again, so there it falls back to cos(theta) - m sin(m) (ArcFace's
        implementation)."""
        s, m = self.cfg.arcface_s, self.cfg.arcface_m
        c = cos.clamp(-1 + 1e-7, 1 - 1e-7)
        sin = torch.sqrt(1 - c ** 2)
        phi = c * math.cos(m) - sin * math.sin(m)
        phi = torch.where(c > math.cos(math.pi - m), phi, c - m * math.sin(m))
        onehot = F.one_hot(target, c.shape[1]).bool()
        return s * torch.where(onehot, phi, c)
