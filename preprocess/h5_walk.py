"""Walking a contract file: every dataset at ``<patient>/<field>/<instance>/<key>``."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import h5py

from Engineering.data.layout import readable_members


@dataclass(frozen=True)
class Entry:
    """Where a dataset sits; preprocess/ spells the ``<patient>/<field>/<instance>[/<key>]`` paths only here."""

    patient: str
    field: str
    instance: str
    key: str

    @property
    def path(self) -> str:
        return f"{self.patient}/{self.field}/{self.instance}/{self.key}"

    @property
    def group(self) -> str:
        return f"{self.patient}/{self.field}/{self.instance}"


def iter_entries(h5: h5py.File) -> Iterator[tuple[Entry, h5py.Dataset]]:
    """Datasets four levels deep, in name order; other objects are the validator's business; a damaged
    object is an error naming it."""
    for patient, pg in readable_members(h5):
        if not isinstance(pg, h5py.Group):
            continue
        for fid, fg in readable_members(pg):
            if not isinstance(fg, h5py.Group):
                continue
            for inst, ig in readable_members(fg):
                if not isinstance(ig, h5py.Group):
                    continue
                for key, obj in readable_members(ig):
                    if isinstance(obj, h5py.Dataset):
                        yield Entry(patient, fid, inst, key), obj


def copy_group_attrs(src: h5py.File, dst: h5py.File, group: str) -> h5py.Group:
    """Create ``group`` in ``dst`` with the attributes of each level in ``src``."""
    parts = group.split("/")
    for depth in range(1, len(parts) + 1):
        path = "/".join(parts[:depth])
        made = dst.require_group(path)
        for name, value in src[path].attrs.items():
            made.attrs[name] = value
    return dst[group]
