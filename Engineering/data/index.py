"""The sample index: which datasets of data.h5 are selected and how they split into samples.

Walking the HDF5 tree of a large cohort is the slow part, so the list of
selected datasets is cached outside the data folder (the data may be
read-only), keyed on the file's path, size and mtime and on the selection; any
change rebuilds it.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import h5py
import numpy as np

from Engineering.data.layout import SampleKey, iter_datasets, parse_key
from Engineering.errors import UserError
from Engineering.io.atomic import write_text

INDEX_VERSION = 2  # 2: the ancestor's selection spellings


@dataclass(frozen=True)
class Selection:
    """The dataNpath DS_* keys that decide which datasets are used."""

    primaries: tuple[str, ...] = ()
    auxiliaries: tuple[str, ...] = ()
    every_primary: bool = True
    include_repeat: bool = True
    sanity_filters: tuple[tuple[int, int], ...] = ()  # (raw axis, required size)
    need_minmax: bool = False  # a volumetric normalisation needs min_val/max_val


@dataclass(frozen=True)
class DatasetRecord(SampleKey):
    shape: tuple[int, ...]
    is_complex: bool
    min_val: float | None
    max_val: float | None


def _as_list(value) -> tuple[str, ...]:
    if isinstance(value, str):
        return tuple(v.strip() for v in value.split(",") if v.strip())
    return tuple(value or ())


def selection_from(paths_cfg, need_minmax: bool) -> Selection:
    filters = []
    for name, size in (paths_cfg.DS_sanity_filters or {}).items():
        if not (name.startswith("dim") and name[3:].isdigit() and 0 <= int(name[3:]) < 5):
            raise UserError(f"json§DS_sanity_filters: key {name!r} must be dim0..dim4")
        filters.append((int(name[3:]), int(size)))
    return Selection(
        _as_list(paths_cfg.DS_selected_primaries),
        _as_list(paths_cfg.DS_selected_auxiliaries),
        paths_cfg.DS_every_primary,
        paths_cfg.DS_include_repeatAcq,
        tuple(sorted(filters)),
        need_minmax,
    )


def selection_name(entry: str, kind: str) -> str:
    """A DS_selected_* entry as a key name: the ancestor wrote tags without their kind
    (``LAX_4Ch_transverse`` for ``primary_LAX_4Ch_transverse_0``); ours and full keys keep theirs."""
    entry = entry.strip()
    head = entry.partition("_")[0]
    return entry if head in ("primary", "auxiliary") else f"{kind}_{entry}"


def _entries(sel: Selection) -> dict[str, str]:
    """{normalised name: entry as written} for every selected primary and auxiliary."""
    out = {selection_name(e, "primary"): e for e in sel.primaries}
    out.update({selection_name(e, "auxiliary"): e for e in sel.auxiliaries})
    return out


def matched_entries(key: str, sel: Selection) -> set[str]:
    """The normalised selection names that ``key`` answers to (full key, stem without repeat, base without plane)."""
    parsed = parse_key(key)
    if parsed is None:
        return set()
    return {parsed.key, parsed.stem, parsed.base} & set(_entries(sel))


def key_selected(key: str, sel: Selection) -> bool:
    """Selected primaries/auxiliaries match the full key, its stem (no repeat) or its base (no plane, no repeat)."""
    parsed = parse_key(key)
    if parsed is None:
        return False
    if not sel.include_repeat and parsed.repeat not in (None, 0):
        return False
    names = {parsed.key, parsed.stem, parsed.base}
    if parsed.kind == "primary":
        wanted = {selection_name(e, "primary") for e in sel.primaries}
        return bool(names & wanted) if sel.primaries else sel.every_primary
    return bool(names & {selection_name(e, "auxiliary") for e in sel.auxiliaries})


def _unmatched_error(h5file, sel: Selection, matched: set[str], seen: set[str]) -> UserError | None:
    """A selection entry that names no dataset of the file is a typo until shown otherwise: name the closest keys."""
    import difflib

    missing = [entry for name, entry in _entries(sel).items() if name not in matched]
    if not missing:
        return None
    stems = sorted({n for k in seen if (p := parse_key(k)) for n in (p.stem, p.base)} | seen)
    parts = []
    for entry in missing:
        close = difflib.get_close_matches(
            selection_name(entry, "primary" if entry in sel.primaries else "auxiliary"), stems, n=3, cutoff=0.5
        )
        parts.append(f"{entry!r}" + (f" (closest keys in the file: {', '.join(close)})" if close else ""))
    some = ", ".join(sorted(seen)[:6]) + (" ..." if len(seen) > 6 else "")
    return UserError(
        f"no dataset in {h5file} matches the selection: json§DS_selected_primaries/auxiliaries "
        f"{'; '.join(parts)} (the file's keys: {some or 'none'})"
    )


def scan(h5file: str | Path, sel: Selection) -> list[DatasetRecord]:
    """Walk patient/field/instance/key and keep the selected, valid datasets."""
    records, seen, matched = [], set(), set()
    try:
        h5 = h5py.File(h5file, "r")
    except FileNotFoundError:
        raise UserError(f"data file not found: {h5file}") from None
    except OSError as exc:
        raise UserError(f"{h5file} is not a readable HDF5 file ({str(exc).splitlines()[0]})") from None
    with h5:
        for where, ds in iter_datasets(h5):
            seen.add(where.key)
            matched |= matched_entries(where.key, sel)
            if key_selected(where.key, sel):
                records.append(_record(h5file, where, ds, sel))
    problem = _unmatched_error(h5file, sel, matched, seen)
    if problem is not None:
        raise problem
    return [r for r in records if r is not None]


def _record(h5file, at: SampleKey, ds: h5py.Dataset, sel: Selection) -> DatasetRecord | None:
    where = f"{h5file}:{at.path}"
    if ds.ndim != 5:
        raise UserError(f"{where} has shape {ds.shape}: the contract needs 5D Channel x Time x Slice x X x Y")
    if not (np.issubdtype(ds.dtype, np.number) or ds.dtype.kind == "b"):
        raise UserError(f"{where} has non-numeric dtype {ds.dtype}")
    if any(ds.shape[axis] != size for axis, size in sel.sanity_filters):
        return None
    if 0 in ds.shape:
        raise UserError(f"{where} is empty: shape {ds.shape} has a zero-length axis")
    lo, hi = (_attr_number(ds, name, where, sel.need_minmax) for name in ("min_val", "max_val"))
    if sel.need_minmax and (lo is None or hi is None):
        raise UserError(
            f"{where} lacks the min_val/max_val attributes that volumetric normalisation "
            "(minmaxvol/divbymaxvol) needs; add them (preprocess/validate_h5.py) or choose another norm_type"
        )
    return DatasetRecord(
        *at.ids, tuple(int(s) for s in ds.shape), bool(np.issubdtype(ds.dtype, np.complexfloating)), lo, hi
    )


def _attr_number(ds: h5py.Dataset, name: str, where: str, needed: bool) -> float | None:
    """A numeric dataset attribute; a value that is not a finite number is an error when it is needed."""
    value = ds.attrs.get(name)
    if value is None:
        return None
    try:
        out = float(np.asarray(value).ravel()[0])
        if not np.isfinite(out):
            raise ValueError
        return out
    except (TypeError, ValueError, IndexError):
        if needed:
            raise UserError(
                f"{where}: attribute {name}={value!r} is not a finite number "
                "(volumetric normalisation needs it; fix it with preprocess/validate_h5.py)"
            ) from None
        return None


def cache_dir() -> Path:
    root = os.environ.get("IMLATENT_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "imlatent")
    return Path(root) / "index"


def cache_key(h5file: str | Path, sel: Selection) -> str:
    st = os.stat(h5file)
    ident = {
        "v": INDEX_VERSION,
        "path": str(Path(h5file).resolve()),
        "size": st.st_size,
        "mtime": st.st_mtime_ns,
        "sel": asdict(sel),
    }
    return hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:24]


def load_records(h5file: str | Path, sel: Selection, use_cache: bool = True) -> tuple[list[DatasetRecord], bool]:
    """The selected datasets, from the cache when it is still valid. Returns (records, cache_hit)."""
    if not Path(h5file).is_file():
        raise UserError(f"data file not found: {h5file}")
    path = cache_dir() / f"{cache_key(h5file, sel)}.json"
    if use_cache and path.is_file():
        try:
            rows = json.loads(path.read_text())
            return [DatasetRecord(**{**r, "shape": tuple(r["shape"])}) for r in rows], True
        except (ValueError, TypeError, KeyError):
            pass  # a damaged cache entry is rebuilt
    records = scan(h5file, sel)
    if use_cache:
        try:
            write_text(path, json.dumps([asdict(r) for r in records]))
        except OSError:
            pass  # a read-only home only costs a rescan next time
    return records, False
