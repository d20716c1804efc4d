"""A rotation-invariant autoencoder: a group-convolutional encoder whose code is invariant to the group's
rotations of the input and whose pose output is equivariant to them, and a decoder that draws the canonical
image from the code and turns it by the pose (seed 003's split of a model's features into the trivial
representation, the code, and the pose; Cohen & Welling, ICML 2016 for the group convolutions).

Invariance: global pooling over space and over the group axis of equivariant features. Pose: one score per
group element from the spatially pooled features (a softmax over the group, permuted by left multiplication
when the input is rotated). Reconstruction: sum_g p_g (g . D(z)), which turns with the input.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from Engineering.Science.grids import inscribed_ball

from .config import RotInvConfig
from .groups import GROUPS
from .layers import GroupBatchNorm, GroupConv, LiftingConv, group_pool2


def inscribed_mask(size: int, dim: int) -> torch.Tensor:
    """1 inside the disk / ball inscribed in the grid (symmetric under the grid's rotations), 0 outside."""
    return torch.from_numpy(inscribed_ball((size,) * dim))


class RotInvEncoder(nn.Module):
    """x (B, C, *S) -> {"z": (B, latent_dim) invariant, "pose_logits": (B, |G|) equivariant, "features"}."""

    def __init__(self, cfg: RotInvConfig):
        super().__init__()
        self.cfg = cfg
        self.group = GROUPS[cfg.group_name]()
        w = cfg.width
        self.lift = LiftingConv(self.group, cfg.in_channels, w)
        self.bn0 = GroupBatchNorm(w)
        self.convs, self.bns, cin = nn.ModuleList(), nn.ModuleList(), w
        for i in range(cfg.depth):
            cout = w * 2 ** min(i + 1, 3)
            self.convs.append(GroupConv(self.group, cin, cout))
            self.bns.append(GroupBatchNorm(cout))
            cin = cout
        self.feature_dim = cin
        self.to_z = nn.Linear(cin, cfg.latent_dim)
        self.pose = nn.Linear(cin, 1)  # the same score function for every group element
        if cfg.mask:
            self.register_buffer("mask", inscribed_mask(cfg.size, cfg.dim), persistent=False)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.cfg.mask:
            x = x * self.mask
        f = F.relu(self.bn0(self.lift(x)))
        for conv, bn in zip(self.convs, self.bns):
            f = group_pool2(F.relu(bn(conv(f))), self.cfg.dim)
        per_element = f.flatten(3).mean(3)  # (B, C, |G|): pooled over space, still equivariant
        z = self.to_z(per_element.mean(2))  # pooled over the group too: invariant
        pose_logits = self.pose(per_element.transpose(1, 2)).squeeze(-1)  # (B, |G|)
        return {"z": z, "pose_logits": pose_logits, "features": per_element}


class CanonicalDecoder(nn.Module):
    """z -> the canonical image (B, C, *S): a linear map to the coarsest grid, then upsampling convolutions."""

    def __init__(self, cfg: RotInvConfig):
        super().__init__()
        self.cfg = cfg
        conv, bn = (nn.Conv2d, nn.BatchNorm2d) if cfg.dim == 2 else (nn.Conv3d, nn.BatchNorm3d)
        self.s0 = cfg.size // 2**cfg.depth
        top = cfg.width * 2 ** min(cfg.depth, 3)
        self.top = top
        self.fc = nn.Linear(cfg.latent_dim, top * self.s0**cfg.dim)
        layers, cin = [], top
        for i in reversed(range(cfg.depth)):
            cout = cfg.width * 2 ** min(i, 3)
            layers += [nn.Upsample(scale_factor=2, mode="nearest"), conv(cin, cout, 3, 1, 1), bn(cout), nn.ReLU()]
            cin = cout
        layers.append(conv(cin, cfg.in_channels, 3, 1, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.fc(z).view(len(z), self.top, *[self.s0] * self.cfg.dim)
        return self.net(F.relu(h))


class RotInvAE(nn.Module):
    """The invariant encoder and the canonical decoder; ``reconstruct`` turns the canonical image by the pose."""

    def __init__(self, cfg: RotInvConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = RotInvEncoder(cfg)
        self.decoder = CanonicalDecoder(cfg)
        self.group = self.encoder.group

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)["z"]

    def posed(self, canonical: torch.Tensor, pose: torch.Tensor) -> torch.Tensor:
        """sum_g pose_g (g . canonical): the canonical image in the input's orientation."""
        turned = torch.stack([self.group.act(g, canonical) for g in range(len(self.group))], 1)
        return (pose.view(*pose.shape, *[1] * (turned.ndim - 2)) * turned).sum(1)

    def draw(self, canonical: torch.Tensor, pose: torch.Tensor) -> torch.Tensor:
        """The canonical image in the pose's orientation, inside the mask: the reconstruction."""
        recon = self.posed(canonical, pose)
        return recon * self.encoder.mask if self.cfg.mask else recon

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        enc = self.encoder(x)
        pose = enc["pose_logits"].softmax(1)
        canonical = self.decoder(enc["z"])
        return {"z": enc["z"], "pose": pose, "canonical": canonical, "recon": self.draw(canonical, pose)}
