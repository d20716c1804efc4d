"""Configuration of the StyleGAN2 WarpDrive (Karras et al., CVPR 2020): generator and discriminator sizes."""

from __future__ import annotations

import math
from dataclasses import dataclass

from Engineering.Engines.WarpDrives.described import described
from Engineering.Engines.WarpDrives.errors import DriveError, positive_int


class StyleGAN2ConfigError(DriveError):
    """A StyleGAN2 configuration value the user can fix."""


@dataclass
class StyleGAN2Config:
    """A StyleGAN2 generator (mapping network, styled convolutions) and its discriminator."""

    size: int = described(64, "image side, a power of two from 32 to 256.")
    channels: int = described(
        1, "image channels (1 for MRI, 3 to 6 for stains): ToRGB and FromRGB generalised to any count."
    )
    style_dim: int = described(512, "width of z, w and the mapping network (512 in the paper).")
    n_mlp: int = described(8, "mapping network depth (8 in the paper).")
    lr_mlp: float = described(0.01, "the mapping network's learning-rate multiplier (0.01 in the paper).")
    channel_multiplier: float = described(
        2.0,
        "feature maps per resolution r are min(channel_max, "
        "channel_multiplier * 16384 / r): the paper's config F is 2 and 512 "
        "(512 up to 64x64, 256 at 128, 128 at 256).",
    )
    channel_max: int = described(
        512, "the cap of the feature maps per resolution (see channel_multiplier; 512 in the paper's config F)."
    )
    blur_kernel: tuple = described((1, 3, 3, 1), "the FIR filter's 1D taps for every up- and downsampling.")
    mixing_prob: float = described(0.9, "probability of style mixing regularisation while training (0.9 in the paper).")

    def __post_init__(self) -> None:
        for name in ("size", "channels", "style_dim", "n_mlp", "channel_max"):
            positive_int(name, getattr(self, name), StyleGAN2ConfigError)
        if self.size not in (32, 64, 128, 256):
            raise StyleGAN2ConfigError(f"size must be a power of two from 32 to 256, got {self.size!r}")
        if not self.channel_multiplier > 0:
            raise StyleGAN2ConfigError(f"channel_multiplier must be > 0, got {self.channel_multiplier!r}")
        if not 0 < self.lr_mlp <= 1:
            raise StyleGAN2ConfigError(f"lr_mlp must be in (0, 1], got {self.lr_mlp!r}")
        if not 0 <= self.mixing_prob <= 1:
            raise StyleGAN2ConfigError(f"mixing_prob must be in [0, 1], got {self.mixing_prob!r}")
        self.blur_kernel = tuple(self.blur_kernel)

    @property
    def log_size(self) -> int:
        return int(math.log2(self.size))

    @property
    def n_latent(self) -> int:
        """Style vectors of W+: two per resolution from 8x8, one for the 4x4 conv and one for its ToRGB."""
        return 2 * self.log_size - 2

    @property
    def n_noise(self) -> int:
        """Noise inputs: one per styled convolution."""
        return 2 * self.log_size - 3

    def noise_sizes(self) -> list[int]:
        """The side of each noise input, in layer order: 4, 8, 8, 16, 16, ..., size, size."""
        return [4] + [2**r for r in range(3, self.log_size + 1) for _ in range(2)]

    def width(self, res: int) -> int:
        return max(1, min(self.channel_max, int(self.channel_multiplier * 16384 // res)))
