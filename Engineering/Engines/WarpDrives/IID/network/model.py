"""The IID predictor of Wu et al. (MIDL 2022): a ResNet classifier whose stages receive the ReStyle encoder's noise
maps ("morph") and whose pooled features are joined by features of the style codes ("stain"), with a CE head
and an ArcFace head (Deng et al., CVPR 2019)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from Engineering.Engines.WarpDrives.resnet import BasicBlock

from .config import IIDConfig, IIDConfigError


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
        # torchvision's wheels do not import beside this project's CPU torch: the same BasicBlock ResNet, with
        # the ImageNet stem (7x7 stride 2 + max pooling) or a 3x3 stride-1 stem for small images
        stem = (
            [nn.Conv2d(cfg.in_channels, w, 3, 1, 1, bias=False)]
            if cfg.stem == "small"
            else [nn.Conv2d(cfg.in_channels, w, 7, 2, 3, bias=False)]
        )
        stem += [nn.BatchNorm2d(w), nn.ReLU(inplace=True)] + ([nn.MaxPool2d(3, 2, 1)] if cfg.stem == "imagenet" else [])
        self.stem = nn.Sequential(*stem)
        self.stages, cin = nn.ModuleList(), w
        for k, n in enumerate(cfg.blocks):
            cout = w * 2**k
            self.stages.append(
                nn.Sequential(
                    *[BasicBlock(cin if j == 0 else cout, cout, 2 if (j == 0 and k) else 1, False) for j in range(n)]
                )
            )
            cin = cout
        widths = [stage[-1].bn2.num_features for stage in self.stages]
        if cfg.use_noise:
            self.inject = nn.ModuleList(NoiseInjection(c, cfg.dropout) for c in widths)
        feat = widths[-1]
        if cfg.use_style:
            self.style = nn.Sequential(
                nn.Conv1d(cfg.n_latent, cfg.style_mix, 1),
                nn.Flatten(),
                nn.BatchNorm1d(cfg.style_mix * cfg.style_dim),
                nn.LeakyReLU(0.2),
                nn.Dropout(cfg.dropout),
            )
            feat += cfg.style_mix * cfg.style_dim
        self.neck = nn.Sequential(nn.Linear(feat, cfg.emb_dim), nn.BatchNorm1d(cfg.emb_dim), nn.ReLU(inplace=True))
        self.head = nn.Linear(cfg.emb_dim, cfg.n_classes)
        self.centres = nn.Parameter(torch.randn(cfg.n_classes, cfg.emb_dim) / math.sqrt(cfg.emb_dim))

    def load_torchvision_weights(self, state: dict[str, torch.Tensor]) -> dict:
        """Start the backbone from a state dict in the layout of torchvision's resnet18 / resnet34 (e.g. ImageNet
        weights the user saved locally; needs the imagenet stem and width 64). Its ``fc`` is dropped (the heads
        are this task's). For C != 3 input channels the first
        convolution is adapted as is usual for pretrained RGB filters (e.g. timm's input-conv adaptation): C = 1
        sums the RGB filters (a grey image then gives the response of the same grey on all three channels),
        otherwise the RGB filters are repeated cyclically to C channels and scaled by 3 / C. Returns what was
        loaded. ``state`` must hold every backbone tensor with its shape and nothing else but ``fc``."""
        if self.cfg.stem != "imagenet":
            raise IIDConfigError(
                "pretrained ResNet weights need the imagenet stem (the small stem has no published weights)"
            )
        names = {"0": "conv1", "1": "bn1"}
        own = {}
        for key in self.stem.state_dict():
            idx, rest = key.split(".", 1)
            own[f"stem.{key}"] = f"{names[idx]}.{rest}"
        for k, stage in enumerate(self.stages):
            for key in stage.state_dict():
                own[f"stages.{k}.{key}"] = f"layer{k + 1}.{key.replace('.skip.', '.downsample.')}"
        missing = [src for src in own.values() if src not in state]
        if missing:
            raise IIDConfigError(
                f"the weights lack {len(missing)} resnet{self.cfg.depth} tensor(s), "
                f"e.g. {', '.join(missing[:3])} (a resnet{self.cfg.depth} state dict is needed)"
            )
        extra = [k for k in state if k not in own.values() and not k.startswith("fc.")]
        if extra:  # e.g. a resnet34's extra blocks: a partial load would be a different network
            raise IIDConfigError(
                f"the weights hold {len(extra)} tensor(s) that resnet{self.cfg.depth} "
                f"lacks, e.g. {', '.join(extra[:3])} (set model§IID§depth to the file's)"
            )
        mine = self.state_dict()
        new, adapted = {}, False
        for dst, src in own.items():
            w = state[src]
            if src == "conv1.weight" and w.shape[1] != mine[dst].shape[1] and w.shape[1] == 3:
                c = mine[dst].shape[1]
                w = w.sum(1, keepdim=True) if c == 1 else w[:, [i % 3 for i in range(c)]] * (3.0 / c)
                adapted = True
            if w.shape != mine[dst].shape:
                raise IIDConfigError(
                    f"weights tensor {src} has shape {tuple(w.shape)}, the backbone needs "
                    f"{tuple(mine[dst].shape)} (torchvision's ResNets have width 64)"
                )
            new[dst] = w.to(mine[dst].dtype)
        self.load_state_dict(new, strict=False)
        return {
            "tensors": len(new),
            "dropped": sorted(k for k in state if k not in own.values()),
            "conv1_adapted": adapted,
        }

    @staticmethod
    def _noise_for(noise: list[torch.Tensor], side: int) -> torch.Tensor:
        """The mean of the noise maps at ``side`` (the generator has two per resolution), else the closest."""
        same = [n for n in noise if n.shape[-1] == side]
        if not same:
            same = [min(noise, key=lambda n: abs(math.log2(n.shape[-1] / side)))]
        return torch.stack(same).mean(0)

    def forward(
        self, x: torch.Tensor, codes: torch.Tensor | None = None, noise: list[torch.Tensor] | None = None
    ) -> dict[str, torch.Tensor]:
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
        sin = torch.sqrt(1 - c**2)
        phi = c * math.cos(m) - sin * math.sin(m)
        phi = torch.where(c > math.cos(math.pi - m), phi, c - m * math.sin(m))
        onehot = F.one_hot(target, c.shape[1]).bool()
        return s * torch.where(onehot, phi, c)
