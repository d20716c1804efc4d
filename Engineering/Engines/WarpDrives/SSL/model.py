"""ResNet encoder (He et al., CVPR 2016; BasicBlock, or Bottleneck for depth 50) in 2D or 3D with BatchNorm, and
the SimCLR projection head (Chen et al., ICML 2020: Linear-BN-ReLU-Linear). Written here because torchvision's
wheels do not import beside the CPU build of torch this project installs; the architecture follows the paper's."""
from __future__ import annotations

import torch
from torch import nn

from .config import SSLConfig


def _layers(is3D: bool):
    return (nn.Conv3d, nn.BatchNorm3d, nn.MaxPool3d, nn.AdaptiveAvgPool3d) if is3D else \
        (nn.Conv2d, nn.BatchNorm2d, nn.MaxPool2d, nn.AdaptiveAvgPool2d)


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, is3D: bool):
        super().__init__()
        Conv, BN, _, _ = _layers(is3D)
        self.conv1, self.bn1 = Conv(cin, cout, 3, stride, 1, bias=False), BN(cout)
        self.conv2, self.bn2 = Conv(cout, cout, 3, 1, 1, bias=False), BN(cout)
        self.act = nn.ReLU(inplace=True)
        self.skip = nn.Identity() if stride == 1 and cin == cout else \
            nn.Sequential(Conv(cin, cout, 1, stride, bias=False), BN(cout))

    def forward(self, x):
        y = self.act(self.bn1(self.conv1(x)))
        return self.act(self.bn2(self.conv2(y)) + self.skip(x))


class Bottleneck(nn.Module):
    """ResNet-50's block (He et al., CVPR 2016): 1x1 reduce, 3x3 (carrying the stride), 1x1 expand by 4."""

    def __init__(self, cin: int, mid: int, stride: int, is3D: bool):
        super().__init__()
        Conv, BN, _, _ = _layers(is3D)
        cout = 4 * mid
        self.body = nn.Sequential(Conv(cin, mid, 1, bias=False), BN(mid), nn.ReLU(inplace=True),
                                  Conv(mid, mid, 3, stride, 1, bias=False), BN(mid), nn.ReLU(inplace=True),
                                  Conv(mid, cout, 1, bias=False), BN(cout))
        self.act = nn.ReLU(inplace=True)
        self.skip = nn.Identity() if stride == 1 and cin == cout else \
            nn.Sequential(Conv(cin, cout, 1, stride, bias=False), BN(cout))

    def forward(self, x):
        return self.act(self.body(x) + self.skip(x))


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
            mid = w * 2 ** k
            cout = mid * cfg.expansion
            for j in range(n):
                stride = 2 if (j == 0 and k > 0) else 1
                stages.append(Bottleneck(cin, mid, stride, cfg.is3D) if cfg.expansion == 4 else
                              BasicBlock(cin, cout, stride, cfg.is3D))
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
        self.projector = nn.Sequential(nn.Linear(cfg.feature_dim, cfg.proj_hidden), nn.BatchNorm1d(cfg.proj_hidden),
                                       nn.ReLU(inplace=True), nn.Linear(cfg.proj_hidden, cfg.proj_dim))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def project(self, h: torch.Tensor) -> torch.Tensor:
        return self.projector(h)
