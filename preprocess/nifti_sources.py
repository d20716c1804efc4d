"""Finding NIfTI files, naming them (patient/field/instance/key) and reading them as 5D.

Layout: a NIfTI array indexed (i, j, k[, t[, c]]) becomes C x T x S x X x Y with
S = k, X = i, Y = j, T = t (4D time series) and C = the 5th (vector) dimension.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from Engineering.data.layout import SampleKey, check_id, parse_key
from Engineering.errors import UserError
from Engineering.io.read_budget import check_read
from preprocess.cli import input_path

NIFTI_SUFFIXES = (".nii", ".nii.gz")
# <patient>_<field>_<instance>[_<anything>], e.g. UK Biobank's 1000001_20252_2_0.nii.gz
ID_NAME = re.compile(r"^(?P<patient>[^_]+)_(?P<field>\d+)_(?P<instance>\d+)(?:_.*)?$")
MAPPING_COLUMNS = ("path", "patientID", "fieldID", "instanceID", "key")


@dataclass(frozen=True)
class NiftiItem(SampleKey):
    """The dataset a NIfTI file becomes (its ``path``/``group`` in the data file) and that file."""

    file: Path


def is_nifti(path: Path) -> bool:
    return path.name.lower().endswith(NIFTI_SUFFIXES)


def stem(path: Path) -> str:
    name = path.name
    return name[: -len(".nii.gz")] if name.lower().endswith(".nii.gz") else name.rsplit(".", 1)[0]


def check_key(key: str, where: str) -> str:
    if parse_key(key) is None:
        raise UserError(f"{where}: {key!r} is not a valid dataset key (primary, primary_<tag> or auxiliary_<tag>)")
    return key


def item_from_name(path: Path, field: str | None, instance: str | None, key: str) -> NiftiItem:
    """IDs from ``<patient>_<field>_<instance>[_...]``; otherwise patient = the whole stem."""
    m = ID_NAME.match(stem(path))
    if m:
        return _checked(NiftiItem(m["patient"], field or m["field"], instance or m["instance"], key, path), str(path))
    return _checked(NiftiItem(stem(path), field or "0", instance or "0", key, path), str(path))


def _checked(item: NiftiItem, where: str) -> NiftiItem:
    for column, value in zip(("patientID", "fieldID", "instanceID"), item.ids):
        check_id(column, value, where)
    return item


def read_mapping(csv_path: Path, field: str | None, instance: str | None, key: str) -> list[NiftiItem]:
    """Rows of a mapping CSV: path (relative to the CSV), patientID[, fieldID, instanceID, key]."""
    with open(csv_path, newline="") as fh:
        reader = csv.DictReader(fh)
        missing = {"path", "patientID"} - set(reader.fieldnames or [])
        if missing:
            raise UserError(
                f"mapping {csv_path}: missing column(s) {sorted(missing)} (columns: {', '.join(MAPPING_COLUMNS)})"
            )
        items = []
        for line, row in enumerate(reader, start=2):
            path = Path(row["path"])
            path = path if path.is_absolute() else csv_path.parent / path
            where = f"mapping {csv_path} line {line}"
            items.append(
                _checked(
                    NiftiItem(
                        (row["patientID"] or "").strip(),
                        (row.get("fieldID") or field or "0").strip(),
                        (row.get("instanceID") or instance or "0").strip(),
                        check_key((row.get("key") or key).strip(), where),
                        path,
                    ),
                    where,
                )
            )
    return items


def find_nifti(
    inputs: list[str], field: str | None = None, instance: str | None = None, key: str = "primary"
) -> list[NiftiItem]:
    """Expand INPUTs (NIfTI files, folders searched recursively, mapping CSVs) into named items."""
    check_key(key, "--key")
    for flag, value in (("--field", field), ("--instance", instance)):
        if value is not None:
            check_id(flag[2:] + "ID", value, flag)
    items: list[NiftiItem] = []
    for raw in inputs:
        path = input_path(raw)
        if path.is_dir():
            items.extend(
                item_from_name(p, field, instance, key) for p in sorted(path.rglob("*")) if p.is_file() and is_nifti(p)
            )
        elif path.suffix.lower() == ".csv":
            items.extend(read_mapping(path, field, instance, key))
        elif is_nifti(path):
            items.append(item_from_name(path, field, instance, key))
        else:
            raise UserError(f"not a NIfTI file, folder or mapping CSV: {raw}")
    return items


def load_5d(path: Path) -> tuple[np.ndarray, dict]:
    """The image as C x T x S x X x Y plus affine/voxel-size attributes."""
    try:
        img = nib.load(str(path))  # the header only: the shape and dtype it declares are checked before the read
    except FileNotFoundError as exc:
        raise ValueError(f"file not found: {path}") from exc
    except Exception as exc:  # nibabel raises several types for damaged files
        raise ValueError(f"cannot read NIfTI ({exc})") from exc
    try:
        check_read(img.shape, img.get_data_dtype(), "the image", copies=3)  # scaled, transposed, byte-swapped
    except UserError as exc:  # one file of a batch: reported and skipped like any unreadable file
        raise ValueError(str(exc)) from None
    try:
        data = np.asanyarray(img.dataobj)
    except Exception as exc:
        raise ValueError(f"cannot read NIfTI ({exc})") from exc
    if data.ndim > 5:
        raise ValueError(f"{data.ndim}D image; at most 5D (x, y, z, t, c) is supported")
    data = data.reshape(data.shape + (1,) * (5 - data.ndim))  # (i, j, k, t, c)
    array = np.ascontiguousarray(np.transpose(data, (4, 3, 2, 0, 1)))
    array = array.astype(array.dtype.newbyteorder("="), copy=False)  # native byte order for readers
    zooms = img.header.get_zooms()
    space_unit, time_unit = img.header.get_xyzt_units()
    attrs = {
        "affine": np.asarray(img.affine, dtype=np.float64),
        "voxel_size": np.asarray((list(zooms[:3]) + [1.0] * 3)[:3], dtype=np.float64),
        "space_unit": str(space_unit),
        "seriesDesc": _descrip(img),
        "sourceFile": path.name,
    }
    if len(zooms) > 3:
        attrs["time_step"] = float(zooms[3])
        attrs["time_unit"] = str(time_unit)
    return array, attrs


def _descrip(img) -> str:
    try:
        raw = img.header["descrip"]
        return (raw.item() if hasattr(raw, "item") else raw).split(b"\x00")[0].decode("latin-1").strip()
    except (KeyError, AttributeError, ValueError):
        return ""
