"""The complex autoencoder's error type and the two checks every layer shares (dimensionality, complex input)."""

from __future__ import annotations

import torch

from Engineering.Engines.WarpDrives.errors import DriveError


class ComplexAEError(DriveError):
    """A complex autoencoder configuration or input the user can fix."""


def check_spatial_dims(spatial_dims) -> int:
    """``spatial_dims`` if it is 2 or 3 (not a bool), else ``ComplexAEError``."""
    if isinstance(spatial_dims, bool) or spatial_dims not in (2, 3):
        raise ComplexAEError(f"spatial_dims must be 2 or 3, got {spatial_dims!r}")
    return spatial_dims


def require_complex(x: torch.Tensor, spatial_dims: int, what: str) -> None:
    """One clear error for a real tensor or a tensor of the wrong rank; the layout is (N, C, [S,] X, Y)."""
    if not x.is_complex():
        raise ComplexAEError(
            f"{what} expects a complex tensor (e.g. torch.complex64), got {x.dtype}; "
            "complex data is read with --complex_mode complex"
        )
    if x.dim() != spatial_dims + 2:
        raise ComplexAEError(
            f"{what} ({spatial_dims}D) expects a tensor of {spatial_dims + 2} dimensions "
            f"(N, C, {'S, ' if spatial_dims == 3 else ''}X, Y), got shape {tuple(x.shape)}"
        )
