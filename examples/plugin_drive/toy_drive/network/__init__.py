"""The toy family's network: a config dataclass and a pure torch module (no Lightning, no files, no config)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from Engineering.Engines.WarpDrives.described import described, required


@dataclass
class ToyConfig:
    """A tiny convolutional autoencoder. Its keys (model§toy) are these fields: each default and description has
    its one home here; what the run gives (channels, size, latent_dim) is required."""

    in_channels: int = required("image channels.")
    size: int = required("side of the square 2D inputs (divisible by 4).")
    latent_dim: int = required("size of the code.")
    width: int = described(8, "channels of the two convolution stages.")


class ToyAE(nn.Module):
    def __init__(self, cfg: ToyConfig):
        super().__init__()
        if cfg.size % 4:
            raise ValueError(f"the toy autoencoder needs a size divisible by 4, got {cfg.size}")
        w, s = cfg.width, cfg.size // 4
        self.enc = nn.Sequential(
            nn.Conv2d(cfg.in_channels, w, 3, 2, 1),
            nn.SiLU(),
            nn.Conv2d(w, w, 3, 2, 1),
            nn.SiLU(),
            nn.Flatten(),
            nn.Linear(w * s * s, cfg.latent_dim),
        )
        self.dec = nn.Sequential(
            nn.Linear(cfg.latent_dim, w * s * s),
            nn.Unflatten(1, (w, s, s)),
            nn.SiLU(),
            nn.ConvTranspose2d(w, w, 4, 2, 1),
            nn.SiLU(),
            nn.ConvTranspose2d(w, cfg.in_channels, 4, 2, 1),
        )

    def encode(self, x):
        return self.enc(x)

    def decode(self, z):
        return self.dec(z)
