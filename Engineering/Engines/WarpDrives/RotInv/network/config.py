"""Configuration of the rotation-invariant autoencoder WarpDrive (seed 003's invariant code + equivariant pose)."""

from __future__ import annotations

from dataclasses import dataclass

from Engineering.Engines.WarpDrives.described import described, required
from Engineering.Engines.WarpDrives.errors import DriveError, positive_int


class RotInvConfigError(DriveError):
    """A rotation-invariant autoencoder configuration value the user can fix."""


@dataclass
class RotInvConfig:
    """A rotation-invariant autoencoder: group convolutions give an invariant code and an equivariant pose."""

    dim: int = described(
        2,
        "2 (group C4, in-plane rotations by 90 degrees) or 3 (group O, the cube's 24 rotations); "
        "both act on the grid exactly, so invariance to them is exact up to float rounding.",
    )
    in_channels: int = described(1, "image channels.")
    size: int = described(32, "image side (square / cubic; divisible by 2**depth).")
    width: int = described(
        8, "feature maps of the first group convolution (each of |G| rotations), doubling per stage."
    )
    depth: int = described(3, "group-convolution stages, each halving the resolution.")
    latent_dim: int = required("size of the invariant code.")
    mask: bool = described(
        True,
        "multiply the input by the inscribed disk / ball, so corners (which rotations move "
        "off the grid in arbitrary-angle rotations) do not reach the code.",
    )

    def __post_init__(self) -> None:
        if self.dim not in (2, 3):
            raise RotInvConfigError(f"dim must be 2 or 3, got {self.dim!r}")
        for name in ("in_channels", "size", "width", "depth", "latent_dim"):
            positive_int(name, getattr(self, name), RotInvConfigError)
        if self.size % (2**self.depth) or self.size // 2**self.depth < 2:
            raise RotInvConfigError(
                f"size {self.size} must be divisible by 2**depth = {2**self.depth} and leave at least 2 pixels"
            )
        self.mask = bool(self.mask)

    @property
    def group_name(self) -> str:
        return "C4" if self.dim == 2 else "O"
