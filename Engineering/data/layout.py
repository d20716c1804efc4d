"""The 5D HDF5 data contract: key names and dataset shapes.

``data.h5/<patientID>/<fieldID>/<instanceID>/<key>`` where ``<key>`` is
``primary``, ``primary_<tag>`` or ``auxiliary_<tag>``, optionally followed by
``_<plane>`` (sagittal/coronal/transverse) and ``_<n>`` (repeat acquisition).
Each dataset is 5D ``Channel x Time x Slice x X x Y``, real or complex.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import h5py

from Engineering.errors import UserError

PLANES = ("sagittal", "coronal", "transverse")
AXES = ("Channel", "Time", "Slice", "X", "Y")
GROUP_ATTRS = ("patientDICOMID", "studyDICOMID", "studyDesc", "aet", "host", "date", "n_series")
DATASET_ATTRS = ("seriesID", "DICOMHeader", "seriesDesc", "min_val", "max_val")




@dataclass(frozen=True)
class DatasetKey:
    """A parsed dataset key, e.g. ``primary_LAX_4Ch_transverse_0``."""

    key: str
    kind: str  # "primary" or "auxiliary"
    tag: str | None
    plane: str | None
    repeat: int | None

    @property
    def base(self) -> str:
        """The key without plane and repeat suffixes (``primary_LAX_4Ch``)."""
        return self.kind if self.tag is None else f"{self.kind}_{self.tag}"

    @property
    def stem(self) -> str:
        """The key without the repeat suffix (``primary_LAX_4Ch_transverse``)."""
        return self.base if self.plane is None else f"{self.base}_{self.plane}"


def parse_key(key: str) -> DatasetKey | None:
    """Parse a dataset key; None when it does not follow the contract.

    ``auxiliary`` requires a tag; ``primary`` may have none.
    """
    rest, repeat, plane = key, None, None
    # Suffixes are peeled from the right: tags may themselves contain underscores.
    head, _, last = rest.rpartition("_")
    if head and last.isdigit():
        rest, repeat = head, int(last)
    head, _, last = rest.rpartition("_")
    if head and last in PLANES:
        rest, plane = head, last
    kind, _, tag = rest.partition("_")
    if kind not in ("primary", "auxiliary") or (kind == "auxiliary" and not tag):
        return None
    return DatasetKey(key, kind, tag or None, plane, repeat)


def members(group: h5py.Group) -> Iterator[tuple[str, object, str | None]]:
    """(name, object, None) for each member of ``group`` in name order, or (name, None, why) when its object
    header cannot be read: h5py's ``items()`` gives None for such a member, which would vanish without a word."""
    for name in sorted(group.keys()):
        try:
            yield name, group[name], None
        except (KeyError, OSError, RuntimeError) as exc:
            yield name, None, str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def readable_members(group: h5py.Group) -> Iterator[tuple[str, object]]:
    """Members of ``group``; a damaged one is a UserError naming it."""
    for name, obj, why in members(group):
        if why is not None:
            raise UserError(f"{group.file.filename}:{group.name.rstrip('/')}/{name} cannot be read ({why}): the file "
                            "is damaged there; check it with preprocess/validate_h5.py")
        yield name, obj
