"""Walking a contract file: every dataset at ``<patient>/<field>/<instance>/<key>``."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import h5py

from Engineering.errors import UserError


@dataclass(frozen=True)
class Entry:
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


def members(group: h5py.Group) -> Iterator[tuple[str, object, str | None]]:
    """(name, object, None) for each member in name order, or (name, None, why) when its object header cannot be
    read: h5py's ``items()`` gives None for such a member, which would make it vanish without a word."""
    for name in sorted(group.keys()):
        try:
            yield name, group[name], None
        except (KeyError, OSError, RuntimeError) as exc:
            yield name, None, str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def _readable(group: h5py.Group, prefix: str):
    for name, obj, why in members(group):
        if why is not None:
            raise UserError(f"{group.file.filename}:{prefix}{name} cannot be read ({why}): the file is damaged "
                            "there; see preprocess/validate_h5.py")
        yield name, obj


def iter_entries(h5: h5py.File) -> Iterator[tuple[Entry, h5py.Dataset]]:
    """Datasets four levels deep, in name order; other objects are the validator's business; a damaged
    object is an error naming it."""
    for patient, pg in _readable(h5, ""):
        if not isinstance(pg, h5py.Group):
            continue
        for fid, fg in _readable(pg, f"{patient}/"):
            if not isinstance(fg, h5py.Group):
                continue
            for inst, ig in _readable(fg, f"{patient}/{fid}/"):
                if not isinstance(ig, h5py.Group):
                    continue
                for key, obj in _readable(ig, f"{patient}/{fid}/{inst}/"):
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
