"""Write the fold file (train/val/test lists of patient IDs) for a contract HDF5 file.

``kfold``: the patients are split into k disjoint test sets covering everyone;
per fold, a validation set is then drawn from the rest. ``montecarlo``: each
fold draws its own random test and validation sets (test sets may overlap).
Splits are by patient, seeded, optionally stratified by a covariate (numeric
covariates with many values are binned into quantiles), using scikit-learn's
(Stratified)KFold / (Stratified)ShuffleSplit.
CSV output: columns train,val,test, one row per fold, each cell a Python list
literal of patient IDs as strings; a .json --out gives a list of
{"train": [...], "val": [...], "test": [...]} instead.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections import Counter
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

from Engineering.config.argtypes import bounded
from Engineering.data.folds import check_disjoint
from Engineering.data.layout import iter_datasets
from Engineering.errors import ArgParser, UserError, run_cli
from Engineering.io.atomic import atomic_path
from preprocess.cli import input_path, tool_main, tool_parser

log = logging.getLogger("preprocess")


def instance_counts(paths: list[str], field: str | None = None) -> Counter:
    """Number of instances holding at least one dataset, per patient (within ``field`` if given)."""
    counts: Counter = Counter()
    for path in paths:
        p = input_path(path)
        if p.suffix.lower() in (".csv", ".tsv", ".txt"):
            for pid in read_id_list(p):
                counts[pid] += 1
            continue
        if not h5py.is_hdf5(p):
            raise UserError(f"not an HDF5 file or an ID list (.csv/.tsv/.txt): {path}")
        with h5py.File(p, "r") as h5:
            seen = {
                (e.patientID, e.fieldID, e.instanceID)
                for e, _ in iter_datasets(h5)
                if field is None or e.fieldID == field
            }
        for patient, _, _ in seen:
            counts[patient] += 1
    return counts


def read_id_list(path: Path) -> list[str]:
    """Patient IDs from the first column of a CSV/TSV (with header) or one per line of a .txt."""
    if path.suffix.lower() == ".txt":
        return [line.strip() for line in path.read_text().splitlines() if line.strip()]
    table = pd.read_csv(path, sep=None, engine="python", dtype=str)
    return table.iloc[:, 0].dropna().str.strip().tolist()


def strata(patients: list[str], table_path: str, column: str, id_column: str | None, n_bins: int) -> np.ndarray:
    """Stratum label per patient from a covariate table; numeric columns with many values are binned."""
    path = Path(table_path)
    if not path.is_file():
        raise UserError(f"covariate table not found: {table_path}")
    table = pd.read_csv(path, sep=None, engine="python", dtype={id_column: str} if id_column else None)
    id_column = id_column or table.columns[0]
    for col in (id_column, column):
        if col not in table.columns:
            raise UserError(
                f"covariate table {table_path} has no column {col!r} (columns: {', '.join(map(str, table.columns))})"
            )
    table[id_column] = table[id_column].astype(str).str.strip()
    values = table.drop_duplicates(id_column).set_index(id_column)[column].reindex(patients)
    missing = values[values.isna()].index.tolist()
    if missing:
        raise UserError(
            f"covariate {column!r} missing for {len(missing)} patient(s), e.g. {missing[:3]}; "
            "filter them out or fill them in"
        )
    if pd.api.types.is_numeric_dtype(values) and values.nunique() > n_bins:
        values = pd.qcut(values, q=n_bins, labels=False, duplicates="drop")
    return values.astype(str).to_numpy()


def make_folds(
    patients: list[str],
    mode: str = "kfold",
    n_folds: int = 5,
    test_frac: float = 0.2,
    val_frac: float = 0.1,
    seed: int = 0,
    labels: np.ndarray | None = None,
) -> list[dict[str, list[str]]]:
    """Folds of {"train", "val", "test"} patient lists; val_frac/test_frac are fractions of all patients."""
    # Imported here: scikit-learn takes a second to load, which --help and input errors need not wait for.
    from sklearn.model_selection import KFold, ShuffleSplit, StratifiedKFold, StratifiedShuffleSplit, train_test_split

    order = np.argsort(patients, kind="stable")  # sorted input makes the seed alone decide
    ids = np.asarray(patients, dtype=str)[order]
    n = len(ids)
    y = np.asarray(labels)[order] if labels is not None else np.zeros(n)
    try:
        if mode == "kfold":
            split = (StratifiedKFold if labels is not None else KFold)(
                n_splits=n_folds, shuffle=True, random_state=seed
            )
        else:
            cls = StratifiedShuffleSplit if labels is not None else ShuffleSplit
            split = cls(n_splits=n_folds, test_size=test_frac, random_state=seed)
        folds = []
        for i, (rest, test) in enumerate(split.split(ids, y)):
            n_val = int(round(val_frac * n))
            if n_val:
                strat = y[rest] if labels is not None else None
                train, val = train_test_split(rest, test_size=n_val, random_state=seed + i, stratify=strat)
            else:
                train, val = rest, rest[:0]
            folds.append({"train": sorted(ids[train]), "val": sorted(ids[val]), "test": sorted(ids[test])})
    except ValueError as exc:  # too few patients (or per stratum) for the requested split
        raise UserError(f"cannot split {n} patients this way: {exc}") from exc
    return [{k: [str(v) for v in vals] for k, vals in fold.items()} for fold in folds]


def write_folds(folds: list[dict[str, list[str]]], out: Path) -> None:
    for i, fold in enumerate(folds):  # never write a fold that the readers would refuse
        check_disjoint(fold, f"fold {i} for {out}")
    with atomic_path(out, create_parent=False) as tmp:
        if out.suffix.lower() == ".json":
            tmp.write_text(json.dumps(folds, indent=1))
        else:
            rows = [{k: repr(fold[k]) for k in ("train", "val", "test")} for fold in folds]
            pd.DataFrame(rows, columns=["train", "val", "test"]).to_csv(tmp, index=False)


def build_parser() -> ArgParser:
    p = tool_parser(
        "make_folds.py", __doc__, out="fold file: .csv (train,val,test list literals) or .json; written atomically"
    )
    p.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="data.h5 file(s), or patient-ID lists (.csv/.tsv first column, .txt one per line; each listing counts "
        "as one instance)",
    )
    p.add_argument(
        "--mode",
        choices=("kfold", "montecarlo"),
        default="kfold",
        help="k-fold with disjoint test sets, or Monte-Carlo random splits (default: kfold)",
    )
    p.add_argument("--n-folds", type=bounded(int, ge=1), default=5, help="number of folds (default: 5)")
    p.add_argument(
        "--test-frac",
        type=bounded(float, ge=0, lt=1),
        default=0.2,
        help="montecarlo: test fraction of all patients (default: 0.2)",
    )
    p.add_argument(
        "--val-frac",
        type=bounded(float, ge=0, lt=1),
        default=0.1,
        help="validation fraction of all patients, drawn from the non-test ones (default: 0.1)",
    )
    p.add_argument("--seed", type=bounded(int, ge=0, le=2**32 - 1), default=0, help="random seed (default: 0)")
    p.add_argument("--covariates", help="CSV/TSV with one row per patient, for --stratify")
    p.add_argument("--stratify", metavar="COLUMN", help="stratify the splits by this covariate column")
    p.add_argument("--id-column", help="patient-ID column of --covariates (default: its first column)")
    p.add_argument(
        "--n-bins",
        type=bounded(int, ge=1),
        default=5,
        help="quantile bins for a numeric covariate with more values (default: 5)",
    )
    p.add_argument("--field", help="only count (and keep) patients with datasets in this field")
    p.add_argument(
        "--min-instances",
        type=bounded(int, ge=0),
        default=1,
        help="keep patients with at least this many instances (default: 1)",
    )
    p.add_argument(
        "--max-instances",
        type=bounded(int, ge=0),
        help="keep patients with at most this many instances (default: no limit)",
    )
    return p


@tool_main(build_parser)
def main(args: argparse.Namespace) -> None:
    if args.n_folds < 2 and args.mode == "kfold":
        raise UserError(f"--n-folds must be at least 2 for kfold, got {args.n_folds}")
    if args.n_folds < 1:
        raise UserError(f"--n-folds must be positive, got {args.n_folds}")
    for name in ("test_frac", "val_frac"):
        if not 0 <= getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be in [0, 1), got {getattr(args, name)}")
    if bool(args.stratify) != bool(args.covariates):
        raise UserError("--stratify and --covariates go together")
    counts = instance_counts(args.inputs, args.field)
    patients = sorted(
        p
        for p, c in counts.items()
        if c >= args.min_instances and (args.max_instances is None or c <= args.max_instances)
    )
    log.info("%d of %d patients kept by the instance filter", len(patients), len(counts))
    if len(patients) < 2:
        raise UserError(f"only {len(patients)} patient(s) left after filtering; need at least 2")
    labels = strata(patients, args.covariates, args.stratify, args.id_column, args.n_bins) if args.stratify else None
    folds = make_folds(patients, args.mode, args.n_folds, args.test_frac, args.val_frac, args.seed, labels)
    write_folds(folds, Path(args.out))
    for i, fold in enumerate(folds):
        print(f"fold {i}: train {len(fold['train'])}, val {len(fold['val'])}, test {len(fold['test'])}")
    log.info("wrote %s", args.out)


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
