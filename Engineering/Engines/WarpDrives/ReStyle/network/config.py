"""Configuration of the ReStyle encoder WarpDrive (Alaluf et al., "ReStyle: A Residual-Based StyleGAN Encoder via
Iterative Refinement", ICCV 2021), with the noise head of Wu et al. (MIDL 2022, seed 000)."""

from __future__ import annotations

from dataclasses import dataclass

from Engineering.Engines.WarpDrives.described import described
from Engineering.Engines.WarpDrives.errors import DriveError, positive_int


class ReStyleConfigError(DriveError):
    """A ReStyle configuration value the user can fix."""


BACKBONES = ("irse", "resnet")


@dataclass
class ReStyleConfig:
    """A ReStyle encoder (pSp's layout) and its noise head."""

    backbone: str = described(
        "irse",
        "irse = pSp's IR-SE units (ArcFace's improved residual + squeeze-excitation; "
        "IR-SE-50 is blocks (3, 4, 14, 3)); resnet = ResNet-34 BasicBlocks (blocks (3, "
        "4, 6, 3)). InstanceNorm in both: the encoder sees one image and its current "
        "reconstruction, independent of the batch.",
    )
    blocks: tuple = described((3, 4, 14, 3), "units per stage (4 stages, each halving the resolution).")
    width: int = described(64, "channels of the first stage (64 in pSp); each stage doubles it, capped at 8x.")
    n_iters: int = described(1, "ReStyle refinement steps per image (the seed's RxRx1 run used 1).")
    noise_head: bool = described(
        True,
        "also predict one 1-channel map per generator noise input from the image (the "
        "seed's \"morph\" code); off, the generator's noise inputs are a fixed draw.",
    )

    def __post_init__(self) -> None:
        if self.backbone not in BACKBONES:
            raise ReStyleConfigError(f"backbone must be one of {', '.join(BACKBONES)}, got {self.backbone!r}")
        self.blocks = tuple(self.blocks)
        if len(self.blocks) != 4:
            raise ReStyleConfigError(f"blocks must give 4 stages, got {list(self.blocks)!r}")
        for i, n in enumerate(self.blocks):
            positive_int(f"blocks[{i}]", n, ReStyleConfigError)
        positive_int("width", self.width, ReStyleConfigError)
        positive_int("n_iters", self.n_iters, ReStyleConfigError)
        self.noise_head = bool(self.noise_head)
