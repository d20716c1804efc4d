"""Group convolutions on grids (Cohen & Welling, ICML 2016): a lifting convolution from an image to a function on
group x space, group convolutions between such functions, and the pooling that leaves what every rotation
agrees on. With odd kernels, 'same' zero padding and 2x pooling of even sizes, every layer commutes exactly with
the group's action: f(g x) = g . f(x), where g acts on space and shifts the group axis by left multiplication.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .groups import GridGroup


def _conv(dim: int):
    return F.conv2d if dim == 2 else F.conv3d


class LiftingConv(nn.Module):
    """(B, Cin, *S) -> (B, Cout, |G|, *S): out[:, :, g] = x * (g . psi), one filter bank seen in every rotation."""

    def __init__(self, group: GridGroup, cin: int, cout: int, k: int = 3):
        super().__init__()
        self.group, self.cout, self.k = group, cout, k
        self.weight = nn.Parameter(torch.randn(cout, cin, *[k] * group.dim) * (2.0 / (cin * k**group.dim)) ** 0.5)
        self.bias = nn.Parameter(torch.zeros(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = self.group
        w = torch.stack([g.act(i, self.weight) for i in range(len(g))], 1)  # (Cout, |G|, Cin, *k)
        y = _conv(g.dim)(x, w.flatten(0, 1), padding=self.k // 2)
        y = y.view(x.shape[0], self.cout, len(g), *y.shape[2:])
        return y + self.bias.view(1, -1, *[1] * (y.ndim - 2))


class GroupConv(nn.Module):
    """(B, Cin, |G|, *S) -> (B, Cout, |G|, *S): out[g] = sum_s f[s] * (g . psi[g^-1 s])."""

    def __init__(self, group: GridGroup, cin: int, cout: int, k: int = 3):
        super().__init__()
        self.group, self.cin, self.cout, self.k = group, cin, cout, k
        n = len(group)
        self.weight = nn.Parameter(
            torch.randn(cout, cin, n, *[k] * group.dim) * (2.0 / (cin * n * k**group.dim)) ** 0.5
        )
        self.bias = nn.Parameter(torch.zeros(cout))
        # which stored group slice feeds output rotation g from input rotation s: g^-1 s
        idx = torch.as_tensor([[group.mul[group.inv[gi], s] for s in range(n)] for gi in range(n)])
        self.register_buffer("index", idx, persistent=False)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        g, n = self.group, len(self.group)
        blocks = []
        for gi in range(n):
            w = self.weight[:, :, self.index[gi]]  # (Cout, Cin, |G| (s), *k)
            blocks.append(g.act(gi, w))
        w = torch.stack(blocks, 1)  # (Cout, |G| (g), Cin, |G| (s), *k)
        w = w.reshape(self.cout * n, self.cin * n, *[self.k] * g.dim)
        y = _conv(g.dim)(f.flatten(1, 2), w, padding=self.k // 2)
        y = y.view(f.shape[0], self.cout, n, *y.shape[2:])
        return y + self.bias.view(1, -1, *[1] * (y.ndim - 2))


class GroupBatchNorm(nn.BatchNorm1d):
    """BatchNorm whose statistics pool the group axis with space (per channel), so it commutes with the action."""

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return super().forward(f.flatten(2)).view_as(f)


def group_pool2(f: torch.Tensor, dim: int) -> torch.Tensor:
    """2x average pooling of the spatial axes of (B, C, |G|, *S); exact under the action for even sizes."""
    b, c, n = f.shape[:3]
    pooled = (F.avg_pool2d if dim == 2 else F.avg_pool3d)(f.flatten(1, 2), 2)
    return pooled.view(b, c, n, *pooled.shape[2:])
