"""Copying the group levels of a contract file (walking it: ``Engineering.data.layout.iter_datasets``)."""

from __future__ import annotations

import h5py


def copy_group_attrs(src: h5py.File, dst: h5py.File, group: str) -> h5py.Group:
    """Create ``group`` in ``dst`` with the attributes of each level in ``src``."""
    parts = group.split("/")
    for depth in range(1, len(parts) + 1):
        path = "/".join(parts[:depth])
        made = dst.require_group(path)
        for name, value in src[path].attrs.items():
            made.attrs[name] = value
    return dst[group]
