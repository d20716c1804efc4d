"""Group DICOM files into series and stack each series into a 5D C x T x S x X x Y array.

Ordering rules (one series at a time):
- Slice (S): position along the slice normal (ImagePositionPatient projected on
  the cross product of the ImageOrientationPatient vectors), else SliceLocation.
- Time (T): TriggerTime, then InstanceNumber, then frame number within a file;
  the frames of a multi-frame file are time points unless per-frame positions
  differ (or the caller says frames are slices: ``frames_as="slice"``).
- Channel (C): echoes (EchoNumbers / EchoTime) when a series has several, times
  the samples per pixel (RGB and palette-colour images give 3 channels).
- X, Y: DICOM Rows, Columns (the pixel array as stored).
A series with mixed orientations (e.g. a tri-plane localiser) is split per plane.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pydicom
from pydicom.pixels import apply_color_lut, apply_modality_lut

from Engineering.data.layout import PLANES
from Engineering.errors import UserError
from Engineering.io.read_budget import check_bytes, nbytes


class SeriesError(Exception):
    """A series that cannot be turned into a 5D array (reported, then skipped)."""


@dataclass
class FileInfo:
    """What the header pass keeps of one image file (pixels are read later)."""

    member: str
    patient_id: str
    study_uid: str
    series_uid: str
    series_desc: str
    series_number: int
    rows: int
    columns: int
    plane: str | None
    normal: tuple[float, float, float] | None
    position: float | None
    trigger_time: float | None
    instance_number: int
    echo: float | None
    study: dict = field(default_factory=dict)  # group attributes of the study


@dataclass
class Series:
    """The files of one series (one plane of it, when orientations are mixed)."""

    uid: str
    description: str
    number: int
    plane: str | None
    files: list[FileInfo]


def _float(value) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def plane_of(iop) -> tuple[str | None, tuple[float, float, float] | None]:
    """Acquisition plane and slice normal from ImageOrientationPatient.

    The normal is row x column; its largest patient-axis component decides:
    x (left-right) -> sagittal, y (anterior-posterior) -> coronal, z -> transverse.
    """
    try:
        vals = [float(v) for v in iop]
    except (TypeError, ValueError):
        return None, None
    if len(vals) != 6:
        return None, None
    normal = np.cross(vals[:3], vals[3:])
    if not np.any(normal):
        return None, None
    return PLANES[int(np.argmax(np.abs(normal)))], tuple(float(v) for v in normal)


def file_info(member: str, ds: pydicom.Dataset) -> FileInfo:
    """Summarise one header; the study attributes follow the contract's group attributes."""
    plane, normal = plane_of(ds.get("ImageOrientationPatient"))
    ipp = ds.get("ImagePositionPatient")
    position = None
    if normal is not None and ipp is not None and len(ipp) == 3:
        position = float(np.dot([float(v) for v in ipp], normal))
    elif ds.get("SliceLocation") is not None:
        position = _float(ds.SliceLocation)
    echo = _float(ds.get("EchoNumbers")) or _float(ds.get("EchoTime"))
    study = {
        "patientDICOMID": str(ds.get("PatientID", "")),
        "studyDICOMID": str(ds.get("StudyInstanceUID", "")),
        "studyDesc": str(ds.get("StudyDescription", "")),
        "aet": str(ds.get("ManufacturerModelName", "")),  # the contract's "AET": scanner model
        "host": str(ds.get("StationName", "")),
        "date": str(ds.get("StudyDate", "")),
        "time": str(ds.get("StudyTime", "")),
        "studyID": str(ds.get("StudyID", "")),
    }
    return FileInfo(
        member=member,
        patient_id=study["patientDICOMID"],
        study_uid=study["studyDICOMID"],
        series_uid=str(ds.get("SeriesInstanceUID", "")),
        series_desc=str(ds.get("SeriesDescription", "")).strip(),
        series_number=int(_float(ds.get("SeriesNumber")) or 0),
        rows=int(ds.Rows),
        columns=int(ds.Columns),
        plane=plane,
        normal=normal,
        position=position,
        trigger_time=_float(ds.get("TriggerTime")),
        instance_number=int(_float(ds.get("InstanceNumber")) or 0),
        echo=echo,
        study=study,
    )


def group_series(files: list[FileInfo]) -> list[Series]:
    """Split files into series by SeriesInstanceUID, plane and in-plane size, in SeriesNumber order."""
    groups: dict[tuple, list[FileInfo]] = defaultdict(list)
    for f in files:
        groups[(f.series_uid, f.plane, f.rows, f.columns)].append(f)
    series = [
        Series(uid, fs[0].series_desc, fs[0].series_number, plane, fs) for (uid, plane, _, _), fs in groups.items()
    ]
    return sorted(series, key=lambda s: (s.number, s.uid, s.plane or ""))


@dataclass
class _Frame:
    channel: float | None
    position: float | None
    time: tuple
    image: np.ndarray  # X x Y x samples


def _pixels(ds: pydicom.Dataset) -> tuple[np.ndarray, bool]:
    """Pixel data as (frames, X, Y, samples), modality/colour LUT applied; flag if rescaled."""
    arr = ds.pixel_array
    frames = int(_float(ds.get("NumberOfFrames")) or 1)
    samples = int(ds.get("SamplesPerPixel", 1))
    rescaled = False
    if ds.get("PhotometricInterpretation") == "PALETTE COLOR":
        arr = apply_color_lut(arr, ds)
        samples = 3
    elif samples == 1:
        slope, intercept = _float(ds.get("RescaleSlope")), _float(ds.get("RescaleIntercept"))
        if (slope not in (None, 1.0)) or (intercept not in (None, 0.0)) or "ModalityLUTSequence" in ds:
            arr = apply_modality_lut(arr, ds)
            rescaled = True
    if frames == 1:
        arr = arr[None]
    if samples == 1:
        arr = arr[..., None]
    return arr, rescaled


def _per_frame(ds: pydicom.Dataset, n: int, sequence: str, keyword: str) -> list | None:
    """A per-frame value from PerFrameFunctionalGroupsSequence (enhanced multi-frame files)."""
    seq = ds.get("PerFrameFunctionalGroupsSequence")
    if seq is None or len(seq) != n:
        return None
    try:
        return [item[sequence][0][keyword].value for item in seq]
    except (KeyError, IndexError):
        return None


def _frames_of(info: FileInfo, ds: pydicom.Dataset, frames_as: str) -> tuple[list[_Frame], bool]:
    arr, rescaled = _pixels(ds)
    n = arr.shape[0]
    positions = [info.position] * n
    per = (
        _per_frame(ds, n, "PlanePositionSequence", "ImagePositionPatient")
        if n > 1 and info.normal is not None
        else None
    )
    if per is not None:
        positions = [float(np.dot([float(v) for v in p], info.normal)) for p in per]
    elif n > 1 and frames_as == "slice":
        # No per-frame geometry: the user says the frames are consecutive slices.
        positions = [(info.position or 0.0) + i for i in range(n)]
    times = [(info.trigger_time or 0.0, info.instance_number, i) for i in range(n)]
    if n > 1:
        per_t = _per_frame(ds, n, "CardiacSynchronizationSequence", "NominalCardiacTriggerDelayTime")
        if per_t is not None:
            times = [(_float(t) or 0.0, info.instance_number, i) for i, t in enumerate(per_t)]
    return [_Frame(info.echo, positions[i], times[i], arr[i]) for i in range(n)], rescaled


def _key(value: float | None, ndigits: int = 2) -> float:
    return -math.inf if value is None else round(value, ndigits)


def assemble(
    series: Series, read: Callable[[str], pydicom.Dataset], frames_as: str = "time"
) -> tuple[np.ndarray, pydicom.Dataset]:
    """Read and stack one series into C x T x S x X x Y; return it with its first header.

    ``frames_as`` ("time" or "slice") says what the frames of a multi-frame file are
    when the file has no per-frame positions.
    """
    # headers declare every file's size: the series (float64 after a rescale, then stacked) is checked first
    sizes = sum(nbytes((f.rows, f.columns), np.float64) for f in series.files)
    try:
        check_bytes(
            2 * sizes,
            f"series {series.number} ({len(series.files)} files, {series.files[0].rows}x"
            f"{series.files[0].columns} pixels each)",
        )
    except UserError as exc:  # one series of a batch: reported and skipped like an undecodable one
        raise SeriesError(str(exc)) from None
    frames: list[_Frame] = []
    first_ds = None
    rescaled = False
    for info in sorted(series.files, key=lambda f: (_key(f.position), f.trigger_time or 0.0, f.instance_number)):
        ds = read(info.member)
        if ds is None:
            raise SeriesError(f"{info.member}: no longer readable as DICOM")
        try:
            got, was_rescaled = _frames_of(info, ds, frames_as)
        except Exception as exc:  # decoding errors come in many types; name the file
            raise SeriesError(f"{info.member}: cannot decode pixels ({exc})") from exc
        rescaled |= was_rescaled
        frames.extend(got)
        if first_ds is None:
            first_ds = ds
    if not frames:
        raise SeriesError(f"series {series.uid}: no image frames")
    channels = sorted({_key(f.channel) for f in frames})
    slices = sorted({_key(f.position) for f in frames})
    cells: dict[tuple, list[_Frame]] = defaultdict(list)
    for f in frames:
        cells[(_key(f.channel), _key(f.position))].append(f)
    counts = {len(v) for v in cells.values()}
    if len(cells) != len(channels) * len(slices) or len(counts) != 1:
        raise SeriesError(
            f"series {series.description or series.uid}: frames do not fill a grid "
            f"({len(channels)} echo(es) x {len(slices)} slice(s), frames per slice {sorted(counts)})"
        )
    n_t = counts.pop()
    x, y, samples = frames[0].image.shape
    dtype = np.float32 if rescaled else np.result_type(*[f.image.dtype for f in frames[:1]])
    out = np.empty((len(channels) * samples, n_t, len(slices), x, y), dtype=dtype)
    for ci, c in enumerate(channels):
        for si, s in enumerate(slices):
            for ti, f in enumerate(sorted(cells[(c, s)], key=lambda f: f.time)):
                out[ci * samples : (ci + 1) * samples, ti, si] = np.moveaxis(f.image, -1, 0)
    return out, first_ds


def phase_to_radians(phase: np.ndarray, ds: pydicom.Dataset) -> np.ndarray:
    """Map a phase image linearly from its representable value range to [-pi, pi].

    The range is that of the stored integers (BitsStored, PixelRepresentation) after
    the rescale slope/intercept, the usual encoding of vendor phase images (e.g.
    Siemens stores -pi..pi as 0..4095 with slope 2 and intercept -4096).
    """
    bits = int(ds.get("BitsStored", 12))
    signed = int(ds.get("PixelRepresentation", 0)) == 1
    lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    slope = _float(ds.get("RescaleSlope")) or 1.0
    intercept = _float(ds.get("RescaleIntercept")) or 0.0
    lo, hi = sorted((lo * slope + intercept, hi * slope + intercept))
    return ((phase.astype(np.float32) - lo) / (hi - lo) * 2 * np.pi - np.pi).astype(np.float32)


def header_json(ds: pydicom.Dataset) -> str:
    """The header as DICOM JSON, without private groups (odd group numbers) or bulk/pixel data."""
    full = ds.to_json_dict(
        bulk_data_threshold=4096, bulk_data_element_handler=lambda elem: "omitted", suppress_invalid_tags=True
    )
    return json.dumps(_public(full))


def _public(node: dict) -> dict:
    out = {}
    for tag, elem in node.items():
        if int(tag[:4], 16) % 2 == 1 or tag == "7FE00010":
            continue
        if elem.get("vr") == "SQ" and "Value" in elem:
            elem = {**elem, "Value": [_public(item) for item in elem["Value"]]}
        out[tag] = elem
    return out
