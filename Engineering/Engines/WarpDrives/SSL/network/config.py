"""Configuration of the self-supervised WarpDrive: a ResNet encoder (He et al., CVPR 2016) and the SimCLR
projection head (Chen et al., ICML 2020)."""

from __future__ import annotations

from dataclasses import dataclass

from Engineering.Engines.WarpDrives.described import described
from Engineering.Engines.WarpDrives.errors import DriveError, positive_int


class SSLConfigError(DriveError):
    """An SSL drive configuration value the user can fix."""


STEMS = ("small", "imagenet")


@dataclass
class SSLConfig:
    """A ResNet encoder with BatchNorm (what Batch Effects Normalization acts on) and a projection head."""

    is3D: bool = described(False, "3D convolutions on (S, X, Y) volumes instead of 2D on (X, Y) images.")
    in_channels: int = described(1, "image channels (any number: 1 for MRI, 3 to 6 for stains).")
    depth: int = described(
        18,
        "18 or 34 (BasicBlock ResNets: 2-2-2-2 or 3-4-6-3 blocks per stage) or 50 (3-4-6-3 "
        "Bottleneck blocks, four times wider outputs: 2048 features at width 64, the backbone "
        "of IP-IRM's reference code).",
    )
    width: int = described(64, "channels of the first stage (64 in the paper's ResNets; each stage doubles it).")
    stem: str = described(
        "small",
        "small = a 3x3 stride-1 convolution and no max-pool (small crops such as 32x32 "
        "cells); imagenet = the 7x7 stride-2 convolution and max-pool of the original "
        "ResNet.",
    )
    proj_hidden: int = described(
        512,
        "the projection head's hidden and output sizes (the loss acts on its output; "
        "the latents are the encoder's pooled features, before it).",
    )
    proj_dim: int = described(
        128,
        "the projection head's hidden and output sizes (the loss acts on its output; the "
        "latents are the encoder's pooled features, before it).",
    )

    def __post_init__(self) -> None:
        for name in ("in_channels", "width", "proj_hidden", "proj_dim"):
            positive_int(name, getattr(self, name), SSLConfigError)
        if self.depth not in (18, 34, 50):
            raise SSLConfigError(f"depth must be 18, 34 or 50, got {self.depth!r}")
        if self.stem not in STEMS:
            raise SSLConfigError(f"stem must be one of {', '.join(STEMS)}, got {self.stem!r}")
        self.is3D = bool(self.is3D)

    @property
    def blocks(self) -> tuple[int, ...]:
        return (2, 2, 2, 2) if self.depth == 18 else (3, 4, 6, 3)

    @property
    def expansion(self) -> int:
        """Output channels of a stage per channel of its width (Bottleneck blocks: 4)."""
        return 4 if self.depth == 50 else 1

    @property
    def feature_dim(self) -> int:
        """Size of the encoder's pooled features (the latents)."""
        return self.width * 8 * self.expansion
