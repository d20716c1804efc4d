"""Atomic HDF5 outputs and dataset writing for the 5D contract.

Every output goes through ``Engineering.io.atomic.atomic_path`` (a temporary file in the
destination folder, then ``os.replace``), so a crash leaves the previous file or none.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import h5py
import numpy as np

from Engineering.errors import UserError
from Engineering.io.atomic import atomic_path

COMPRESSIONS = ("gzip", "lzf", "none")


@contextmanager
def atomic_h5(path: str | os.PathLike, append: bool = False) -> Iterator[h5py.File]:
    """Open a temporary HDF5 file that replaces ``path`` when the block succeeds."""
    if append and Path(path).exists():
        check_h5(path)
    with atomic_path(path, copy_existing=append, create_parent=False) as tmp:
        with h5py.File(tmp, "a" if append else "w") as h5:
            yield h5


def check_h5(path: str | os.PathLike) -> Path:
    """Raise a UserError naming ``path`` unless it is an existing HDF5 file."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"file not found: {path}")
    if path.is_dir() or not h5py.is_hdf5(path):
        raise UserError(f"not an HDF5 file: {path}")
    try:
        with h5py.File(path, "r"):
            pass
    except OSError as exc:  # the signature is there but the file is truncated or damaged
        raise UserError(f"cannot open {path} ({str(exc).splitlines()[0]}): truncated or damaged?") from None
    return path


def magnitude_range(array: np.ndarray) -> tuple[float, float]:
    """(min, max) of the magnitude (|z| for complex data), ignoring NaN."""
    mag = np.abs(array) if np.iscomplexobj(array) else array
    if mag.size == 0 or np.all(np.isnan(mag)):
        return float("nan"), float("nan")
    return float(np.nanmin(mag)), float(np.nanmax(mag))


def write_image(
    group: h5py.Group,
    key: str,
    array: np.ndarray,
    attrs: Mapping[str, object] | None = None,
    compression: str = "gzip",
) -> h5py.Dataset:
    """Write one 5D dataset with min_val/max_val (of the magnitude) and extra attributes."""
    if array.ndim != 5:
        raise ValueError(f"{key}: expected a 5D C x T x S x X x Y array, got shape {array.shape}")
    if key in group:
        del group[key]
    # One chunk per in-plane image keeps single-slice reads cheap.
    chunks = (1, 1, 1) + array.shape[3:] if array.size else None
    comp = None if compression == "none" else compression
    ds = group.create_dataset(key, data=array, chunks=chunks, compression=comp)
    for name, value in (attrs or {}).items():
        if value is not None:
            ds.attrs[name] = value
    ds.attrs["min_val"], ds.attrs["max_val"] = magnitude_range(array)
    return ds


def prune_empty(h5: h5py.File, path: str) -> None:
    """Delete ``path`` if it is an empty group, then each parent left empty."""
    while path and path in h5 and isinstance(h5[path], h5py.Group) and len(h5[path]) == 0:
        del h5[path]
        path = path.rsplit("/", 1)[0] if "/" in path else ""


def remove_and_prune(h5: h5py.File, paths: list[str]) -> None:
    """Delete ``paths`` and then every group left empty above them."""
    for path in paths:
        if path in h5:
            del h5[path]
        prune_empty(h5, path.rsplit("/", 1)[0] if "/" in path else "")
