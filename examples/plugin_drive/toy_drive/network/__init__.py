"""The toy family's network: a config dataclass and a pure torch module (no Lightning, no files, no config)."""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn


@dataclass
class ToyConfig:
    in_channels: int = 1
    size: int = 32  # square 2D inputs of size x size
    latent_dim: int = 8
    width: int = 8


class ToyAE(nn.Module):
    def __init__(self, cfg: ToyConfig):
        super().__init__()
        if cfg.size % 4:
            raise ValueError(f"the toy autoencoder needs a size divisible by 4, got {cfg.size}")
        w, s = cfg.width, cfg.size // 4
        self.enc = nn.Sequential(nn.Conv2d(cfg.in_channels, w, 3, 2, 1), nn.SiLU(), nn.Conv2d(w, w, 3, 2, 1),
                                 nn.SiLU(), nn.Flatten(), nn.Linear(w * s * s, cfg.latent_dim))
        self.dec = nn.Sequential(nn.Linear(cfg.latent_dim, w * s * s), nn.Unflatten(1, (w, s, s)), nn.SiLU(),
                                 nn.ConvTranspose2d(w, w, 4, 2, 1), nn.SiLU(),
                                 nn.ConvTranspose2d(w, cfg.in_channels, 4, 2, 1))

    def encode(self, x):
        return self.enc(x)

    def decode(self, z):
        return self.dec(z)
