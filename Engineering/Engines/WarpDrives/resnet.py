"""The ResNet trunk's residual blocks (He et al., CVPR 2016) in 2D or 3D with BatchNorm: BasicBlock (ResNet-18/34)
and Bottleneck (ResNet-50). Shared by the SSL encoder and the IID classifier (families never import each other);
written here because torchvision's wheels do not import beside the CPU build of torch this project installs."""

from __future__ import annotations

from torch import nn


def layers_for(is3D: bool):
    return (
        (nn.Conv3d, nn.BatchNorm3d, nn.MaxPool3d, nn.AdaptiveAvgPool3d)
        if is3D
        else (nn.Conv2d, nn.BatchNorm2d, nn.MaxPool2d, nn.AdaptiveAvgPool2d)
    )


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, is3D: bool):
        super().__init__()
        Conv, BN, _, _ = layers_for(is3D)
        self.conv1, self.bn1 = Conv(cin, cout, 3, stride, 1, bias=False), BN(cout)
        self.conv2, self.bn2 = Conv(cout, cout, 3, 1, 1, bias=False), BN(cout)
        self.act = nn.ReLU(inplace=True)
        self.skip = (
            nn.Identity()
            if stride == 1 and cin == cout
            else nn.Sequential(Conv(cin, cout, 1, stride, bias=False), BN(cout))
        )

    def forward(self, x):
        y = self.act(self.bn1(self.conv1(x)))
        return self.act(self.bn2(self.conv2(y)) + self.skip(x))


class Bottleneck(nn.Module):
    """ResNet-50's block (He et al., CVPR 2016): 1x1 reduce, 3x3 (carrying the stride), 1x1 expand by 4."""

    def __init__(self, cin: int, mid: int, stride: int, is3D: bool):
        super().__init__()
        Conv, BN, _, _ = layers_for(is3D)
        cout = 4 * mid
        self.body = nn.Sequential(
            Conv(cin, mid, 1, bias=False),
            BN(mid),
            nn.ReLU(inplace=True),
            Conv(mid, mid, 3, stride, 1, bias=False),
            BN(mid),
            nn.ReLU(inplace=True),
            Conv(mid, cout, 1, bias=False),
            BN(cout),
        )
        self.act = nn.ReLU(inplace=True)
        self.skip = (
            nn.Identity()
            if stride == 1 and cin == cout
            else nn.Sequential(Conv(cin, cout, 1, stride, bias=False), BN(cout))
        )

    def forward(self, x):
        return self.act(self.body(x) + self.skip(x))
