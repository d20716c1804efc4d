"""The 5D HDF5 data contract: key names and dataset shapes.

``data.h5/<patientID>/<fieldID>/<instanceID>/<key>`` where ``<key>`` is
``primary``, ``primary_<tag>`` or ``auxiliary_<tag>``, optionally followed by
``_<plane>`` (sagittal/coronal/transverse) and ``_<n>`` (repeat acquisition).
Each dataset is 5D ``Channel x Time x Slice x X x Y``, real or complex.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import h5py

from Engineering.errors import UserError

PLANES = ("sagittal", "coronal", "transverse")
AXES = ("Channel", "Time", "Slice", "X", "Y")
GROUP_ATTRS = ("patientDICOMID", "studyDICOMID", "studyDesc", "aet", "host", "date", "n_series")
DATASET_ATTRS = ("seriesID", "DICOMHeader", "seriesDesc", "min_val", "max_val")

# The ID columns of every flat table (latents, metrics, predictions): the dataset key, then the sample's index
# along the axes a dataset is split on (0 where an axis is not split).
KEY_COLUMNS = ("patientID", "fieldID", "instanceID", "key")
INDEX_COLUMNS = ("c", "t", "s")
SAMPLE_COLUMNS = KEY_COLUMNS + INDEX_COLUMNS


@dataclass(frozen=True)
class SampleKey:
    """Where a dataset sits: ``<patientID>/<fieldID>/<instanceID>/<key>`` (the only place that spells it)."""

    patientID: str
    fieldID: str
    instanceID: str
    key: str

    @property
    def group(self) -> str:
        return f"{self.patientID}/{self.fieldID}/{self.instanceID}"

    @property
    def path(self) -> str:
        return f"{self.group}/{self.key}"

    @property
    def ids(self) -> tuple[str, str, str, str]:
        return self.patientID, self.fieldID, self.instanceID, self.key


@dataclass(frozen=True)
class SampleInfo(SampleKey):
    """One sample of a dataset: its (c, t, s) index (None on an axis that is not split) and the sizes of its
    dataset's output array along those axes (1 where not split)."""

    c: int | None = None
    t: int | None = None
    s: int | None = None
    n_c: int = 1
    n_t: int = 1
    n_s: int = 1

    @property
    def index(self) -> tuple[int, int, int]:
        """The (c, t, s) of the flat tables and emb.h5: an axis that is not split has the single index 0."""
        return self.c or 0, self.t or 0, self.s or 0

    def row(self) -> dict:
        """The ID columns of this sample in a flat table."""
        return dict(zip(SAMPLE_COLUMNS, self.ids + self.index))


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


def check_id(column: str, value: str, where: str) -> str:
    """A patient/field/instance ID is one HDF5 group name: an empty one, '.', '..' or one with '/' would put the
    dataset at another depth (or inside another patient's group), where no reader finds it as that patient."""
    if not value.strip() or value in (".", "..") or "/" in value:
        raise UserError(
            f"{where}: {column} {value!r} cannot be a group name of the data file (an ID is not empty, "
            "'.' or '..', and has no '/')"
        )
    return value


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
            raise UserError(
                f"{group.file.filename}:{group.name.rstrip('/')}/{name} cannot be read ({why}): the file "
                "is damaged there; check it with preprocess/validate_h5.py"
            )
        yield name, obj


def iter_datasets(h5: h5py.File) -> Iterator[tuple[SampleKey, h5py.Dataset]]:
    """The one walker of a contract file: datasets four levels deep (patient/field/instance/key), in name order;
    other objects are skipped (the validator reports them); a damaged object is an error naming it."""
    for pid, pg in readable_members(h5):
        if not isinstance(pg, h5py.Group):
            continue
        for fid, fg in readable_members(pg):
            if not isinstance(fg, h5py.Group):
                continue
            for iid, ig in readable_members(fg):
                if not isinstance(ig, h5py.Group):
                    continue
                for key, obj in readable_members(ig):
                    if isinstance(obj, h5py.Dataset):
                        yield SampleKey(pid, fid, iid, key), obj
