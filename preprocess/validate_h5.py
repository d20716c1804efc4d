"""Check an HDF5 file against the 5D data contract and summarise its content.

Problems (exit code 2): objects outside ``<patient>/<field>/<instance>/<key>``,
key names that do not parse, datasets that are not 5D or not numeric, empty
datasets, NaN/Inf values, min_val > max_val or attributes that disagree with the
data, DICOMHeader that is not JSON, masks (``meta_mask.h5`` beside the file) whose
keys have no dataset or whose shape differs from it.
Warnings (exit 0 unless --strict): missing min_val/max_val (needed for the
volumetric normalisations), empty groups, datasets without a mask.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
from rich.console import Console
from rich.table import Table

from Engineering.config.argtypes import bounded
from Engineering.data.layout import members, parse_key
from Engineering.errors import ArgParser, UserError, run_cli
from Engineering.io.read_budget import check_read
from preprocess.cli import tool_main, tool_parser
from preprocess.h5_writer import check_h5, magnitude_range

LEVELS = ("patient", "field", "instance")


@dataclass
class Findings:
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    keys: Counter = field(default_factory=Counter)
    shapes: dict = field(default_factory=dict)  # key stem -> Counter of (shape, dtype)
    groups: dict = field(default_factory=lambda: {lvl: set() for lvl in LEVELS})
    n_datasets: int = 0


def _bad_structure(path: str, obj, depth: int, out: Findings) -> bool:
    """Report objects at the wrong depth; True when ``obj`` must not be descended."""
    if depth < 3 and isinstance(obj, h5py.Dataset):
        out.problems.append(
            f"{path}: dataset at {LEVELS[depth]} level (datasets belong at <patient>/<field>/<instance>/<key>)"
        )
        return True
    if depth == 3 and isinstance(obj, h5py.Group):
        out.problems.append(f"{path}: group where a dataset key is expected")
        return True
    if depth < 3 and isinstance(obj, h5py.Group) and len(obj) == 0:
        out.warnings.append(f"{path}: empty group")
    return False


def _number(value) -> float | None:
    try:
        out = float(np.asarray(value).ravel()[0])
    except (TypeError, ValueError, IndexError):
        return None
    return out if np.isfinite(out) else None


def check_values(path: str, ds: h5py.Dataset, out: Findings, tol: float) -> None:
    """NaN/Inf and min/max agreement, reading one C x T block at a time (bounded memory)."""
    lo, hi, nonfinite = np.inf, -np.inf, 0
    for c in range(ds.shape[0]):
        for t in range(ds.shape[1]):
            block = ds[c, t]
            finite = np.isfinite(block)
            nonfinite += int(block.size - finite.sum())
            if finite.any():
                b_lo, b_hi = magnitude_range(block[finite])
                lo, hi = min(lo, b_lo), max(hi, b_hi)
    if nonfinite:
        out.problems.append(f"{path}: {nonfinite} NaN/Inf value(s)")
    for name, actual in (("min_val", lo), ("max_val", hi)):
        stored = _number(ds.attrs[name]) if name in ds.attrs else None
        if stored is not None and np.isfinite(actual):
            if abs(stored - actual) > tol * max(1.0, abs(actual)):
                out.problems.append(f"{path}: {name}={stored:g} but the data's magnitude {name[:3]} is {actual:g}")


def check_dataset(path: str, key: str, ds: h5py.Dataset, out: Findings, scan: bool, tol: float) -> None:
    out.n_datasets += 1
    parsed = parse_key(key)
    if parsed is None:
        out.problems.append(f"{path}: key {key!r} is not primary, primary_<tag> or auxiliary_<tag> [_<plane>][_<n>]")
    stem = parsed.stem if parsed else key
    out.keys[stem] += 1
    out.shapes.setdefault(stem, Counter())[(ds.shape, str(ds.dtype))] += 1
    if ds.ndim != 5:
        out.problems.append(f"{path}: {ds.ndim}D with shape {ds.shape}; expected 5D Channel x Time x Slice x X x Y")
    if ds.dtype.kind not in "iufc":
        out.problems.append(f"{path}: dtype {ds.dtype} is not numeric (int, uint, float or complex)")
    if ds.size == 0:
        out.problems.append(f"{path}: empty (shape {ds.shape})")
    has = [n in ds.attrs for n in ("min_val", "max_val")]
    bounds = [_number(ds.attrs[n]) if h else None for n, h in zip(("min_val", "max_val"), has)]
    if not all(has):
        out.warnings.append(f"{path}: no min_val/max_val (needed for volumetric normalisation)")
    elif None in bounds:
        bad = [n for n, b in zip(("min_val", "max_val"), bounds) if b is None]
        out.problems.append(f"{path}: {', '.join(f'{n}={ds.attrs[n]!r}' for n in bad)} is not a finite number")
    elif bounds[0] > bounds[1]:
        out.problems.append(f"{path}: min_val > max_val")
    if "DICOMHeader" in ds.attrs:
        try:
            json.loads(ds.attrs["DICOMHeader"])
        except (TypeError, ValueError):
            out.problems.append(f"{path}: DICOMHeader is not valid JSON")
    if scan and ds.ndim == 5 and ds.size and ds.dtype.kind in "iufc":
        try:  # one C x T block at a time, each read checked from its declared size first
            check_read(ds.shape[2:], ds.dtype, f"one block of {path}", copies=3)  # the block, its masks, its values
        except UserError as exc:
            out.problems.append(f"{path}: not scanned: {exc} (--quick skips the scan)")
            return
        check_values(path, ds, out, tol)


def _readable(group: h5py.Group, prefix: str, out: Findings):
    """Members of ``group``; one whose object header is damaged is reported as a problem and skipped."""
    for name, obj, why in members(group):
        if why is not None:
            out.problems.append(f"{prefix}{name}: cannot be read ({why}); the file is damaged there")
            continue
        yield name, obj


def check_file(h5: h5py.File, scan: bool = True, tol: float = 1e-4) -> Findings:
    out = Findings()
    for patient, pg in _readable(h5, "", out):
        if _bad_structure(patient, pg, 0, out):
            continue
        out.groups["patient"].add(patient)
        for fid, fg in _readable(pg, f"{patient}/", out):
            if _bad_structure(f"{patient}/{fid}", fg, 1, out):
                continue
            out.groups["field"].add(fid)
            for inst, ig in _readable(fg, f"{patient}/{fid}/", out):
                gpath = f"{patient}/{fid}/{inst}"
                if _bad_structure(gpath, ig, 2, out):
                    continue
                out.groups["instance"].add(gpath)
                for key, obj in _readable(ig, f"{gpath}/", out):
                    if not _bad_structure(f"{gpath}/{key}", obj, 3, out):
                        check_dataset(f"{gpath}/{key}", key, obj, out, scan, tol)
    if out.n_datasets == 0:
        out.problems.append("no datasets at <patient>/<field>/<instance>/<key>")
    return out


def check_masks(data: h5py.File, masks: h5py.File, out: Findings, name: str) -> None:
    """Every mask needs a dataset of the same shape (the data layer indexes both alike)."""
    seen = set()

    def visit(path: str, obj) -> None:
        if not isinstance(obj, h5py.Dataset):
            return
        seen.add(path)
        if path not in data or not isinstance(data[path], h5py.Dataset):
            out.problems.append(f"{name}/{path}: mask without a dataset in the data file")
            return
        ds_shape, m_shape = data[path].shape, obj.shape
        if m_shape != ds_shape:
            out.problems.append(f"{name}/{path}: mask shape {m_shape} differs from data shape {ds_shape}")

    masks.visititems(visit)
    n_missing = out.n_datasets - len(seen)
    if n_missing > 0:
        out.warnings.append(f"{n_missing} dataset(s) have no mask in {name}")


def summary_table(out: Findings) -> Table:
    table = Table()
    for col in ("key", "datasets", "shapes (C, T, S, X, Y) and dtypes"):
        table.add_column(col)
    for stem, n in sorted(out.keys.items()):
        shapes = ", ".join(f"{s}×{k} {d}" if k > 1 else f"{s} {d}" for (s, d), k in out.shapes[stem].most_common(4))
        more = len(out.shapes[stem]) - 4
        table.add_row(stem, str(n), shapes + (f", +{more} more" if more > 0 else ""))
    return table


def build_parser() -> ArgParser:
    p = tool_parser("validate_h5.py", __doc__)
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="data.h5 file(s) to check")
    p.add_argument(
        "--mask", help="mask file to check against the (single) INPUT (default: meta_mask.h5 beside it, if present)"
    )
    p.add_argument("--no-mask", action="store_true", help="do not check masks")
    p.add_argument(
        "--quick",
        action="store_true",
        help="check names, shapes and attributes only; skip reading the values (NaN/Inf, min/max)",
    )
    p.add_argument(
        "--tol",
        type=bounded(float, ge=0),
        default=1e-4,
        help="relative tolerance for min_val/max_val against the data (default: 1e-4)",
    )
    p.add_argument("--strict", action="store_true", help="treat warnings as problems")
    p.add_argument(
        "--max-listed",
        type=bounded(int, ge=0),
        default=50,
        help="list at most this many problems and warnings each (default: 50)",
    )
    return p


@tool_main(build_parser)
def main(args: argparse.Namespace) -> None:
    if args.mask and len(args.inputs) > 1:
        raise UserError("--mask needs a single INPUT")
    paths = [check_h5(p) for p in args.inputs]
    if args.mask:
        check_h5(args.mask)
    # soft_wrap: one finding per line, whatever the terminal width (greppable logs).
    console, err = Console(soft_wrap=True), Console(stderr=True, soft_wrap=True)
    failed = []
    for path in paths:
        with h5py.File(path, "r") as h5:
            out = check_file(h5, scan=not args.quick, tol=args.tol)
            mask_path = None if args.no_mask else Path(args.mask) if args.mask else path.parent / "meta_mask.h5"
            if mask_path is not None and mask_path.exists() and mask_path.resolve() != path.resolve():
                with h5py.File(check_h5(mask_path), "r") as masks:
                    check_masks(h5, masks, out, mask_path.name)
        counts = ", ".join(f"{len(out.groups[lvl])} {lvl}(s)" for lvl in LEVELS)
        console.print(f"{path}: {counts}, {out.n_datasets} dataset(s)", markup=False, highlight=False)
        console.print(summary_table(out), soft_wrap=False)
        problems = out.problems + (out.warnings if args.strict else [])
        warnings = [] if args.strict else out.warnings
        for label, items, stream in (("warning", warnings, console), ("problem", problems, err)):
            for line in items[: args.max_listed]:
                stream.print(f"{label}: {line}", markup=False, highlight=False)
            if len(items) > args.max_listed:
                stream.print(f"... and {len(items) - args.max_listed} more {label}s", markup=False)
        if problems:
            failed.append(f"{path} ({len(problems)} problem{'s' if len(problems) > 1 else ''})")
        else:
            console.print(f"{path}: valid", markup=False)
    if failed:
        raise UserError(f"not valid: {', '.join(failed)}")


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
