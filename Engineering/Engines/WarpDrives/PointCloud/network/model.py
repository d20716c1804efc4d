"""Point-cloud autoencoders: a DGCNN encoder (EdgeConv on a k-NN graph; Wang et al., TOG 2019), a Vector Neuron
encoder (Deng et al., "Vector Neurons", ICCV 2021) whose code is SO(3)-invariant and whose canonical frame is its
pose, and a FoldingNet decoder (Yang et al., CVPR 2018). Clouds are (B, N, 3) or (B, N, 4) (xyz + intensity);
every encoder is invariant to the order of the points (symmetric pooling over them).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import PointCloudConfig


def knn(points: torch.Tensor, k: int) -> torch.Tensor:
    """(B, N, D) -> (B, N, min(k, N - 1)) indices of each point's nearest other points."""
    k = min(k, points.shape[1] - 1)
    return torch.cdist(points, points).topk(k + 1, largest=False).indices[..., 1:]  # the first is the point itself


def gather_neighbours(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """x (B, N, ...) and idx (B, N, k) -> (B, N, k, ...)."""
    b, n, k = idx.shape
    flat = idx.reshape(b, n * k)
    out = torch.gather(x, 1, flat.view(b, n * k, *[1] * (x.ndim - 2)).expand(b, n * k, *x.shape[2:]))
    return out.view(b, n, k, *x.shape[2:])


class EdgeConv(nn.Module):
    """h_i' = max_j MLP([h_i, h_j - h_i]) over the k nearest neighbours j of i (in the current features)."""

    def __init__(self, cin: int, cout: int, k: int):
        super().__init__()
        self.k = k
        self.mlp = nn.Sequential(nn.Linear(2 * cin, cout), nn.LayerNorm(cout), nn.LeakyReLU(0.2))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        nb = gather_neighbours(h, knn(h, self.k))  # (B, N, k, C)
        centre = h.unsqueeze(2).expand_as(nb)
        return self.mlp(torch.cat([centre, nb - centre], -1)).max(2).values


class DGCNNEncoder(nn.Module):
    """(B, N, F) -> {"z"}: EdgeConv layers (the graph rebuilt in each layer's features), global max + mean."""

    def __init__(self, cfg: PointCloudConfig):
        super().__init__()
        widths = [cfg.width * (2 if i else 1) for i in range(cfg.n_layers)]
        self.convs = nn.ModuleList(
            EdgeConv(c_in, c_out, cfg.k) for c_in, c_out in zip([cfg.in_features, *widths[:-1]], widths)
        )
        self.head = nn.Linear(2 * sum(widths), cfg.latent_dim)

    def forward(self, pts: torch.Tensor) -> dict[str, torch.Tensor]:
        h, feats = pts, []
        for conv in self.convs:
            h = conv(h)
            feats.append(h)
        f = torch.cat(feats, -1)
        return {"z": self.head(torch.cat([f.max(1).values, f.mean(1)], -1))}


class VNLinear(nn.Module):
    """Mixes channels of vector features (…, C, 3) -> (…, C', 3); commutes with rotations of the 3-axis."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cout, cin) / math.sqrt(cin))

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        return torch.einsum("oc,...cd->...od", self.weight, v)


class VNLeakyReLU(nn.Module):
    """Vector Neurons' non-linearity: each vector q keeps its part along a learnt direction k(v) when it points
    the same way, otherwise that part is removed (leaky with ``slope``). Equivariant: q and k rotate together."""

    def __init__(self, channels: int, slope: float = 0.2):
        super().__init__()
        self.dir = VNLinear(channels, channels)
        self.slope = slope

    def forward(self, q: torch.Tensor) -> torch.Tensor:
        k = self.dir(q)
        dot = (q * k).sum(-1, keepdim=True)
        k2 = (k * k).sum(-1, keepdim=True) + 1e-6
        cut = torch.where(dot >= 0, q, q - dot / k2 * k)
        return self.slope * q + (1 - self.slope) * cut


class VNEdgeConv(nn.Module):
    """Vector edge features [v_j - v_i, v_i] over the k nearest points (in space: rotation-invariant graph), a
    VN linear map and non-linearity, the mean over neighbours."""

    def __init__(self, cin: int, cout: int, k: int):
        super().__init__()
        self.k = k
        self.lin, self.act = VNLinear(2 * cin, cout), VNLeakyReLU(cout)

    def forward(self, v: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        nb = gather_neighbours(v, idx)  # (B, N, k, C, 3)
        centre = v.unsqueeze(2).expand_as(nb)
        return self.act(self.lin(torch.cat([nb - centre, centre], -2))).mean(2)


class VNEncoder(nn.Module):
    """(B, N, F) -> {"z" (invariant), "frame" (B, 3, 3) rows = an orthonormal right-handed frame that rotates with
    the cloud: frame(x R^T) = frame(x) R^T, "centre" (B, 1, 3)}. Points are centred on their (intensity-weighted)
    mean first, so the code is also invariant to translations."""

    def __init__(self, cfg: PointCloudConfig):
        super().__init__()
        self.cfg = cfg
        widths = [cfg.width * (2 if i else 1) for i in range(cfg.n_layers)]
        self.convs = nn.ModuleList(VNEdgeConv(c_in, c_out, cfg.k) for c_in, c_out in zip([1, *widths[:-1]], widths))
        c = sum(widths)
        self.to_frame = VNLinear(c, 2)
        self.head = nn.Linear(3 * c, cfg.latent_dim)

    def forward(self, pts: torch.Tensor) -> dict[str, torch.Tensor]:
        xyz = pts[..., :3]
        w = pts[..., 3:4].clamp_min(0) if pts.shape[-1] == 4 else torch.ones_like(xyz[..., :1])
        w = w / w.sum(1, keepdim=True).clamp_min(1e-8)
        centre = (w * xyz).sum(1, keepdim=True)
        xyz = xyz - centre
        idx = knn(xyz, self.cfg.k)
        v = (xyz * w * xyz.shape[1]).unsqueeze(2)  # (B, N, 1, 3): intensity scales each point's vector
        feats = []
        for conv in self.convs:
            v = conv(v, idx)
            feats.append(v)
        pooled = torch.cat(feats, 2).mean(1)  # (B, C, 3): equivariant
        a, b = self.to_frame(pooled).unbind(1)  # two equivariant vectors -> Gram-Schmidt + cross product
        e1 = F.normalize(a, dim=-1)
        e2 = F.normalize(b - (b * e1).sum(-1, keepdim=True) * e1, dim=-1)
        frame = torch.stack([e1, e2, torch.cross(e1, e2, dim=-1)], 1)  # (B, 3, 3), rows
        inv = torch.einsum("bcd,bed->bce", pooled, frame)  # the features in the frame: invariant
        return {"z": self.head(inv.flatten(1)), "frame": frame, "centre": centre}


class FoldingDecoder(nn.Module):
    """z -> (B, grid**2, 3): two folds of a fixed 2D grid, each an MLP of [z, current points]."""

    def __init__(self, cfg: PointCloudConfig, hidden: int = 128):
        super().__init__()
        t = torch.linspace(-1, 1, cfg.grid)
        self.register_buffer("grid", torch.stack(torch.meshgrid(t, t, indexing="ij"), -1).view(-1, 2), persistent=False)

        def mlp(cin):
            return nn.Sequential(
                nn.Linear(cin, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 3)
            )

        self.fold1, self.fold2 = mlp(cfg.latent_dim + 2), mlp(cfg.latent_dim + 3)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        m = self.grid.shape[0]
        zz = z.unsqueeze(1).expand(-1, m, -1)
        p = self.fold1(torch.cat([zz, self.grid.expand(len(z), -1, -1)], -1))
        return self.fold2(torch.cat([zz, p], -1))


class PointCloudAE(nn.Module):
    """Encoder + FoldingNet decoder. With the VN encoder the decoder draws the cloud in the canonical frame and
    ``forward`` turns it back by the frame (and the input's centre), so the reconstruction rotates with the
    input."""

    def __init__(self, cfg: PointCloudConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = VNEncoder(cfg) if cfg.encoder == "vn" else DGCNNEncoder(cfg)
        self.decoder = FoldingDecoder(cfg)

    def encode(self, pts: torch.Tensor) -> torch.Tensor:
        return self.encoder(pts)["z"]

    @staticmethod
    def place(cloud: torch.Tensor, enc: dict[str, torch.Tensor]) -> torch.Tensor:
        """A decoded cloud in the encoded input's pose: VN's canonical coordinates turned by its frame and moved to
        its centre; DGCNN's as decoded."""
        return cloud @ enc["frame"] + enc["centre"] if "frame" in enc else cloud

    def forward(self, pts: torch.Tensor) -> dict[str, torch.Tensor]:
        enc = self.encoder(pts)
        return {**enc, "recon": self.place(self.decoder(enc["z"]), enc)}
