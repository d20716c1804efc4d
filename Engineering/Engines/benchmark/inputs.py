"""The benchmark's inputs: run names, label-file names, pixel axes and vectors, the NSC metadata, and the report's
summary. Every check here runs before anything is written; a bad input is a UserError."""

from __future__ import annotations

import datetime as _dt
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from Engineering.data.labels import CATEGORICAL
from Engineering.errors import UserError
from Engineering.Eval import baselines
from Engineering.Eval.pixels import read_pixels
from Engineering.Eval.samples import aggregate_rows
from Engineering.io.latents import resolve_latent_file

REPORT_FILES = ("metrics.json", "metrics.csv", "report.html")


def check_out(option: str) -> None:
    """--out: refused now, not after the whole benchmark has run, where a folder or file is in the way."""
    out = Path(option)
    for path in (out, *(out / name for name in REPORT_FILES)):
        if path.exists() and path.is_dir() != (path == out):
            raise UserError(
                f"--out {option}: {path} is {'a folder' if path.is_dir() else 'a file'} where the "
                f"benchmark writes {'its report file' if path != out else 'its folder'}"
            )


def check_options(args) -> None:
    """Flags that act only with another one, and --archetypes' range."""
    nsc_only = {
        "--compound_col": args.compound_col,
        "--dose_col": args.dose_col,
        "--well_col": args.well_col,
        "--plate_col": args.plate_col,
        "--nsc_center": args.nsc_center,
        "--nsc_controls": args.nsc_controls,
        "--nsc_tvn": args.nsc_tvn,
    }
    if not args.nsc_label and any(nsc_only.values()):
        raise UserError(f"{', '.join(k for k, v in nsc_only.items() if v)} only act on NSC: add --nsc_label COL")
    if args.archetypes == 1 or args.archetypes < 0:
        raise UserError(f"--archetypes K needs K >= 2 (or 0: off), got {args.archetypes}")


def nsc_meta(table: pd.DataFrame, args) -> pd.DataFrame:
    """compound / treatment / batch / label (/ well) per sample, from the label tables."""
    need = {"--nsc_label": args.nsc_label, "--compound_col": args.compound_col, "--batch_col": args.batch_col}
    if not all(need.values()):
        raise UserError("--nsc_label needs " + " and ".join(k for k, v in need.items() if not v))
    if args.nsc_tvn and not args.nsc_controls:
        raise UserError("--nsc_tvn needs --nsc_controls COMPOUND (the control wells it is fitted on)")
    cols = [
        c
        for c in (args.nsc_label, args.compound_col, args.batch_col, args.dose_col, args.well_col, args.plate_col)
        if c
    ]
    missing = [c for c in cols if c not in table.columns]
    if missing:
        raise UserError(f"NSC column(s) {', '.join(missing)} not in the label tables")
    if table[cols].isna().any().any():
        raise UserError(f"NSC columns {', '.join(cols)} have missing values for some samples")
    meta = pd.DataFrame(
        {
            "compound": table[args.compound_col].astype(str),
            "batch": table[args.batch_col].astype(str),
            "label": table[args.nsc_label].astype(str),
        }
    )
    meta["treatment"] = meta["compound"] + ("@" + table[args.dose_col].astype(str) if args.dose_col else "")
    if args.well_col:
        meta["well"] = table[args.well_col].astype(str)
    if args.plate_col:
        meta["plate"] = table[args.plate_col].astype(str)
    if args.nsc_controls and not (meta["compound"] == str(args.nsc_controls)).any():
        raise UserError(f"--nsc_controls {args.nsc_controls}: no sample has that compound in {args.compound_col}")
    return meta.reset_index(drop=True)


def nsc_note(args) -> str:
    """What the NSC numbers are: the reference's profiles, which controls were dropped, whether TVN ran."""
    text = (
        f"NSC/NSCB as in Lin & Lu's BBBC021 notebook: one profile per treatment over all batches (the batch "
        f"column {args.batch_col} only acts on NSCB)"
    )
    if not args.nsc_controls:
        return text + "; no --nsc_controls: every compound is a query (the reference drops its DMSO controls)"
    text += f"; control {args.nsc_controls} dropped from the profiles"
    if args.nsc_tvn:
        return text + f"; whitened on the controls and TVN per {args.plate_col or args.batch_col}"
    return text + "; no TVN (add --nsc_tvn)"


def named_paths(items: list[str]) -> dict[str, Path]:
    """Run name -> path from ``PATH`` or ``NAME=PATH`` (default name: the run folder's name)."""
    named: dict[str, Path] = {}
    for item in items:
        name, sep, rest = item.partition("=")
        if sep and name and "/" not in name and not Path(item).exists():
            if name in named:
                raise UserError(f"run name '{name}' given twice")
            named[name] = Path(rest)
            continue
        base = default_name(Path(item))
        name, i = base, 2
        while name in named:
            name, i = f"{base}_{i}", i + 1
        named[name] = Path(item)
    return named


def default_name(path: Path) -> str:
    path = path.resolve()
    folder = path.parent if path.suffix else path
    if folder.name.startswith("Output"):
        folder = folder.parent
    return folder.name or path.stem


def label_name(path: str, all_paths: list[str]) -> str:
    """Short name of a label file for messages (the full path when base names clash)."""
    base = Path(path).name
    return base if sum(Path(p).name == base for p in all_paths) == 1 else str(path)


def pixel_axes(option: str | None, paths: dict[str, Path]) -> tuple[int, int]:
    """The axis swaps the latents were computed with: --pixels_axes, else the runs' resolved configs (which
    must agree), else the contract's order."""
    if option:
        try:
            channel, slice_ = (int(v) for v in option.split(","))
        except ValueError:
            raise UserError(f"--pixels_axes must be CHANNEL_DIM,SLICE_DIM such as 0,1; got {option!r}") from None
        return channel, slice_
    found = {}
    for name, path in paths.items():
        latent = resolve_latent_file(path)
        for folder in (latent.parent, latent.parent.parent):
            if (folder / "resolved_config.yaml").is_file():
                js = (yaml.safe_load((folder / "resolved_config.yaml").read_text()) or {}).get("json") or {}
                found[name] = (int(js.get("DS_channel_dim", 0)), int(js.get("DS_slice_dim", 2)))
                break
    if len(set(found.values())) > 1:
        raise UserError(
            f"the runs were computed with different axis swaps {found}; benchmark them separately or pass --pixels_axes"
        )
    return next(iter(found.values()), (0, 2))


def pixels(path: str, samples, axes: tuple[int, int]) -> np.ndarray:
    """Pixel vectors per benchmark sample, averaged like the latents when aggregated."""
    raw = read_pixels(path, samples.source_rows, *axes)
    index = samples.source_rows[["sample_index"]]
    keys, mean = aggregate_rows(index, raw, ["sample_index"])
    if len(keys) != len(samples.ids):
        raise UserError(f"pixels cover {len(keys)} of {len(samples.ids)} samples")
    return mean


def summary(paths, runs, samples, targets, args) -> dict[str, str]:
    """The report's header: runs, baselines, samples, labels, targets, columns and settings."""
    runs_text = "; ".join(
        f"{n}: {resolve_latent_file(p)} ({len(runs[n])} rows, {samples.latents[n].shape[1]} dims)"
        for n, p in paths.items()
    )
    target_text = (
        ", ".join(
            f"{t.name} ({'classes' if t.kind == CATEGORICAL else 'continuous'}, n={int(t.mask.sum())})" for t in targets
        )
        or "none"
    )
    return {
        "generated": _dt.datetime.now().isoformat(timespec="seconds"),
        "runs": runs_text,
        "baselines": ", ".join(baselines.NAMES[:1] + ((baselines.PCA_PIXELS,) if args.pixels else ())),
        "samples": f"{len(samples.ids)} common samples (aggregate: {args.aggregate})",
        "labels": ", ".join(args.labels) or "none",
        "targets": target_text,
        "batch column": args.batch_col or "none",
        "group column": args.group_col or "none",
        "settings": f"{args.n_splits}-fold CV x {args.n_repeats} repeats, {args.n_boot} bootstrap resamples "
        f"(percentile 95% CI{', resampling whole groups' if args.group_col else ''}), "
        f"{args.n_perm} permutations, seed {args.seed}",
    }
