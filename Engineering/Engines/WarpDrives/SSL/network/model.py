"""ResNet encoder (He et al., CVPR 2016; BasicBlock, or Bottleneck for depth 50) in 2D or 3D with BatchNorm, and
the SimCLR projection head (Chen et al., ICML 2020: Linear-BN-ReLU-Linear). Written here because torchvision's
wheels do not import beside the CPU build of torch this project installs; the architecture follows the paper's."""

from __future__ import annotations

import torch
from torch import nn

from Engineering.Engines.WarpDrives.resnet import BasicBlock, Bottleneck
from Engineering.Engines.WarpDrives.resnet import layers_for as _layers

from .config import SSLConfig


class ResNetEncoder(nn.Module):
    def __init__(self, cfg: SSLConfig):
        super().__init__()
        Conv, BN, Pool, GAP = _layers(cfg.is3D)
        w = cfg.width
        if cfg.stem == "small":
            stem = [Conv(cfg.in_channels, w, 3, 1, 1, bias=False), BN(w), nn.ReLU(inplace=True)]
        else:
            stem = [Conv(cfg.in_channels, w, 7, 2, 3, bias=False), BN(w), nn.ReLU(inplace=True), Pool(3, 2, 1)]
        self.stem = nn.Sequential(*stem)
        stages, cin = [], w
        for k, n in enumerate(cfg.blocks):
            mid = w * 2**k
            cout = mid * cfg.expansion
            for j in range(n):
                stride = 2 if (j == 0 and k > 0) else 1
                stages.append(
                    Bottleneck(cin, mid, stride, cfg.is3D)
                    if cfg.expansion == 4
                    else BasicBlock(cin, cout, stride, cfg.is3D)
                )
                cin = cout
        self.stages = nn.Sequential(*stages)
        self.pool = GAP(1)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Conv3d)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.stages(self.stem(x))).flatten(1)


class SSLNet(nn.Module):
    """``encode(x)`` gives the latents (pooled encoder features); ``project(h)`` the loss's embedding."""

    def __init__(self, cfg: SSLConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = ResNetEncoder(cfg)
        self.projector = nn.Sequential(
            nn.Linear(cfg.feature_dim, cfg.proj_hidden),
            nn.BatchNorm1d(cfg.proj_hidden),
            nn.ReLU(inplace=True),
            nn.Linear(cfg.proj_hidden, cfg.proj_dim),
        )

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def project(self, h: torch.Tensor) -> torch.Tensor:
        return self.projector(h)
