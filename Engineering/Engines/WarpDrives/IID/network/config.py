"""Configuration of the IID predictor WarpDrive (Wu et al., "Towards IID representation learning and its
application on biomedical data", MIDL 2022; seed 000)."""

from __future__ import annotations

from dataclasses import dataclass

from Engineering.Engines.WarpDrives.described import described
from Engineering.Engines.WarpDrives.errors import DriveError, positive_int


class IIDConfigError(DriveError):
    """An IID predictor configuration value the user can fix."""


STEMS = ("small", "imagenet")


@dataclass
class IIDConfig:
    """The IID predictor's ResNet. Neither use_noise nor use_style: the ERM baseline (a plain ResNet classifier)."""

    in_channels: int = described(3, "image channels.")
    n_classes: int = described(2, "classes.")
    depth: int = described(18, "layers of the ResNet (BasicBlock, BatchNorm): 18 or 34.")
    width: int = described(64, "channels of the ResNet's first stage, doubling per stage.")
    stem: str = described(
        "small",
        "small = a 3x3 stride-1 stem for small images (32-64 px); imagenet = the 7x7 "
        "stride-2 stem and max pooling of the ImageNet ResNets, the layout of "
        "torchvision's resnet18 / resnet34 (with width 64 it can start from a local file of "
        "their weights: ``load_torchvision_weights``).",
    )
    use_noise: bool = described(
        False, "inject the encoder's noise maps into the stages (``h + Dropout(alpha * n)``, alpha learnt from 0)."
    )
    use_style: bool = described(
        False, "concatenate features of the style codes (n_latent x style_dim) with the pooled image features."
    )
    n_latent: int = described(0, "style codes per image (the encoder's generator's); needed with use_style.")
    style_dim: int = described(0, "size of each style code (the encoder's generator's); needed with use_style.")
    style_mix: int = described(4, "learnt combinations of the n_latent layer codes (a 1x1 Conv1d over the layer axis).")
    dropout: float = described(0.1, "of the injected noise and of the style features.")
    emb_dim: int = described(256, "the embedding after the neck (what the heads read).")
    arcface_s: float = described(
        30.0, "ArcFace's scale (Deng et al., CVPR 2019), used when the loss coefficient is > 0."
    )
    arcface_m: float = described(
        0.5, "ArcFace's additive angular margin (Deng et al., CVPR 2019), used when the loss coefficient is > 0."
    )

    def __post_init__(self) -> None:
        for name in ("in_channels", "width", "style_mix", "emb_dim"):
            positive_int(name, getattr(self, name), IIDConfigError)
        if isinstance(self.n_classes, bool) or not isinstance(self.n_classes, int) or self.n_classes < 2:
            raise IIDConfigError(f"n_classes must be an integer >= 2, got {self.n_classes!r}")
        if self.depth not in (18, 34):
            raise IIDConfigError(f"depth must be 18 or 34, got {self.depth!r}")
        if self.stem not in STEMS:
            raise IIDConfigError(f"stem must be one of {', '.join(STEMS)}, got {self.stem!r}")
        if self.use_style:
            positive_int("n_latent", self.n_latent, IIDConfigError)
            positive_int("style_dim", self.style_dim, IIDConfigError)
        if not 0 <= self.dropout < 1:
            raise IIDConfigError(f"dropout must be in [0, 1), got {self.dropout!r}")
        if not (self.arcface_s > 0 and 0 <= self.arcface_m < 3.14159):
            raise IIDConfigError(
                f"arcface_s must be > 0 and arcface_m in [0, pi), got {self.arcface_s!r}, {self.arcface_m!r}"
            )
        self.use_noise, self.use_style = bool(self.use_noise), bool(self.use_style)

    @property
    def blocks(self) -> tuple[int, ...]:
        return (2, 2, 2, 2) if self.depth == 18 else (3, 4, 6, 3)
