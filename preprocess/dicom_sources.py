"""Where DICOM files come from: single files, folders (searched recursively) and zips.

A *source* is one zip, one loose file, or all loose files below an INPUT folder. UK Biobank
bulk zips are named ``<eid>_<field>_<instance>_<array>.zip``; their name gives the
patient/field/instance IDs. Files are read one at a time (headers first, pixels
later), so memory holds at most one series.
"""

from __future__ import annotations

import io
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.errors import InvalidDicomError

from preprocess.cli import input_path

UKBB_ZIP = re.compile(r"^(?P<patient>\d+)_(?P<field>\d+)_(?P<instance>\d+)_(?P<array>\d+)\.zip$", re.IGNORECASE)
# Directory records are DICOM but hold no image.
MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"


@dataclass(frozen=True)
class Source:
    """One unit of input: a zip, a loose file, or the loose files below a folder."""

    path: Path
    kind: str  # "zip", "file" or "tree" (a folder's loose files, recursively)
    ids: tuple[str, str, str] | None = None  # (patient, field, instance) from a UK Biobank zip name

    @property
    def name(self) -> str:
        return str(self.path)

    def members(self) -> list[str]:
        """File names inside the source (zip members or paths), sorted."""
        if self.kind == "zip":
            with zipfile.ZipFile(self.path) as zf:
                return sorted(n for n in zf.namelist() if not n.endswith("/"))
        if self.kind == "file":
            return [str(self.path)]
        return sorted(str(p) for p in self.path.rglob("*") if p.is_file() and not _skipped_name(p))


class SourceReader:
    """Reads DICOM members of one source; keeps a zip open while in use."""

    def __init__(self, source: Source):
        self.source = source
        self._zip = zipfile.ZipFile(source.path) if source.kind == "zip" else None

    def __enter__(self) -> SourceReader:
        return self

    def __exit__(self, *exc) -> None:
        if self._zip is not None:
            self._zip.close()

    def read(self, member: str, pixels: bool = True) -> pydicom.Dataset | None:
        """The dataset of ``member``, or None when it is not an image DICOM file."""
        try:
            if self._zip is not None:
                fp = io.BytesIO(self._zip.read(member))
                ds = pydicom.dcmread(fp, stop_before_pixels=not pixels)
            else:
                ds = pydicom.dcmread(member, stop_before_pixels=not pixels)
        except (InvalidDicomError, EOFError, IsADirectoryError):
            return None
        sop = str(ds.file_meta.get("MediaStorageSOPClassUID", "")) if hasattr(ds, "file_meta") else ""
        if "Rows" not in ds or sop == MEDIA_STORAGE_DIRECTORY:
            return None
        return ds


def _skipped_name(path: Path) -> bool:
    return path.name.startswith(".") or path.suffix.lower() == ".zip"


def ukbb_ids(path: Path) -> tuple[str, str, str] | None:
    """(patient, field, instance) from a name like ``1000001_20208_2_0.zip``."""
    m = UKBB_ZIP.match(path.name)
    return (m["patient"], m["field"], m["instance"]) if m else None


def find_sources(inputs: list[str]) -> list[Source]:
    """Expand INPUT paths into sources; a missing path is a UserError.

    A folder contributes each zip below it as its own source, plus all loose files
    below it as one more source (a study split into series sub-folders stays whole;
    the DICOM tags then separate patients and studies).
    """
    sources: list[Source] = []
    for raw in inputs:
        path = input_path(raw)
        if path.is_file():
            kind = "zip" if zipfile.is_zipfile(path) or path.suffix.lower() == ".zip" else "file"
            sources.append(Source(path, kind, ukbb_ids(path) if kind == "zip" else None))
            continue
        zips = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() == ".zip")
        sources.extend(Source(p, "zip", ukbb_ids(p)) for p in zips)
        loose = [p for p in path.rglob("*") if p.is_file() and not _skipped_name(p)]
        if loose:
            sources.append(Source(path, "tree"))
    return sources
