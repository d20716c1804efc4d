"""Label tables (phenotypes, covariates) joined to the benchmark's samples.

A label table is keyed by patient: the column ``patientID``, ``FID``, ``f.eid``
or ``eid`` if present, else its first column. When it also has ``fieldID``,
``instanceID`` or ``key`` columns (and the samples have them), the join uses
those too. Each label column becomes a target: categorical (classification,
retrieval, silhouette) or continuous (regression), decided by dtype and number
of distinct values unless the user says otherwise.

Policy for unusable targets: a column the user named (in --label_cols or a type
flag) must work, so a missing column, a single class or a constant value is a
``UserError``; columns picked up automatically are skipped with a note in the report.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from Engineering.data.layout import SAMPLE_COLUMNS
from Engineering.errors import UserError

ID_ALIASES = ("patientID", "FID", "f.eid", "eid")
JOIN_EXTRA = ("fieldID", "instanceID", "key")
MAX_CLASSES = 10  # integer columns with at most this many values are treated as classes
CATEGORICAL, CONTINUOUS = "categorical", "continuous"


@dataclass
class Target:
    name: str
    kind: str  # CATEGORICAL or CONTINUOUS
    values: np.ndarray  # per sample; meaningful where ``mask``
    mask: np.ndarray  # samples usable for this target
    note: str | None = None


def read_label_table(path: str | Path) -> pd.DataFrame:
    """A label table with its ID column renamed ``patientID`` (string IDs)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"labels file not found: {path}")
    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            df = pd.read_parquet(path)
        else:
            sep = {".tsv": "\t", ".tab": "\t", ".txt": "\t", ".csv": ","}.get(suffix)
            header = pd.read_csv(path, sep=sep, engine="python", nrows=0)  # sep=None sniffs
            str_cols = {c: str for c in header.columns if c in ID_ALIASES + JOIN_EXTRA or c == header.columns[0]}
            df = pd.read_csv(path, sep=sep, engine="python", dtype=str_cols)
    except (OSError, ValueError, ImportError, pd.errors.ParserError) as exc:
        raise UserError(f"cannot read labels {path}: {exc}") from exc
    if df.shape[1] < 2:
        raise UserError(f"labels file {path} has {df.shape[1]} column(s); expected an ID column and labels")
    id_col = next((c for c in ID_ALIASES if c in df.columns), df.columns[0])
    df = df.rename(columns={id_col: "patientID"})
    for col in ("patientID",) + JOIN_EXTRA:
        if col in df.columns:
            df[col] = df[col].astype(str).str.strip()
    return df


def attach_labels(ids: pd.DataFrame, tables: dict[str, pd.DataFrame]) -> tuple[pd.DataFrame, list[str]]:
    """``ids`` with the label columns of every table (name -> table) joined on; plus notes."""
    out = ids.copy()
    notes: list[str] = []
    for name, table in tables.items():
        on = ["patientID"] + [c for c in JOIN_EXTRA if c in table.columns and c in ids.columns]
        dup = table.duplicated(on)
        if dup.any():
            first = table.loc[dup.to_numpy()].iloc[0]
            raise UserError(
                f"labels {name}: {int(dup.sum())} duplicate rows for " + ", ".join(f"{c}={first[c]}" for c in on)
            )
        cols = [c for c in table.columns if c not in on and c not in JOIN_EXTRA]
        clash = [c for c in cols if c in out.columns]
        if clash:
            notes.append(f"labels {name}: column(s) {', '.join(clash)} already taken; kept the first")
            cols = [c for c in cols if c not in clash]
        matched = ids[on].merge(table[on].drop_duplicates(), on=on).shape[0]
        if matched == 0:
            raise UserError(
                f"no overlap between latents and labels {name} on {'/'.join(on)}: latents have e.g. "
                f"{_examples(ids['patientID'])}, labels have e.g. {_examples(table['patientID'])}"
            )
        if matched < len(ids):
            notes.append(f"labels {name}: {len(ids) - matched} of {len(ids)} samples have no row")
        out = out.merge(table[on + cols], on=on, how="left")
    return out, notes


def infer_kind(series: pd.Series) -> str:
    """Categorical for text, booleans and integer codes with few values; continuous otherwise."""
    values = series.dropna()
    if values.dtype == bool:
        return CATEGORICAL
    numeric = pd.to_numeric(values, errors="coerce")
    if numeric.isna().any():
        return CATEGORICAL
    is_integer = bool(np.all(np.mod(numeric.to_numpy(dtype=float), 1) == 0))
    return CATEGORICAL if is_integer and numeric.nunique() <= MAX_CLASSES else CONTINUOUS


def resolve_targets(
    table: pd.DataFrame,
    label_cols: list[str] | None,
    categorical: list[str] | None,
    continuous: list[str] | None,
    reserved: list[str],
    min_class_size: int,
    min_samples: int,
) -> tuple[list[Target], list[str]]:
    """Targets to evaluate, and notes on the ones skipped (UserError for explicit ones)."""
    categorical, continuous = list(categorical or []), list(continuous or [])
    both = set(categorical) & set(continuous)
    if both:
        raise UserError(f"column(s) {', '.join(sorted(both))} given as both categorical and continuous")
    named = list(dict.fromkeys(list(label_cols or []) + categorical + continuous))
    missing = [c for c in named if c not in table.columns]
    if missing:
        raise UserError(
            f"label column(s) {', '.join(missing)} not found in the labels "
            f"(available: {', '.join(_label_columns(table, reserved)) or 'none'})"
        )
    # Without --label_cols every label column is used; the type flags then only override types.
    names = named if label_cols else list(dict.fromkeys(_label_columns(table, reserved) + named))
    targets, notes = [], []
    for name in names:
        kind = CATEGORICAL if name in categorical else CONTINUOUS if name in continuous else infer_kind(table[name])
        target, problem = _make_target(table[name], name, kind, min_class_size, min_samples)
        if problem and name in named:
            raise UserError(f"label '{name}': {problem}")
        if problem:
            notes.append(f"label '{name}' skipped: {problem}")
        else:
            targets.append(target)
    if not names:
        notes.append("no label columns: only label-free metrics were computed")
    return targets, notes


def batch_target(table: pd.DataFrame, column: str, min_class_size: int) -> Target:
    """The batch column (e.g. site) as a categorical target; it must have two batches or more."""
    if column not in table.columns:
        raise UserError(f"batch column '{column}' not found (available: {', '.join(map(str, table.columns))})")
    target, problem = _make_target(table[column], column, CATEGORICAL, min_class_size, 2)
    if problem:
        raise UserError(f"batch column '{column}': {problem}")
    return target


def outlier_target(table: pd.DataFrame, column: str) -> Target:
    """A column marking known outliers (1/0 or true/false) as a categorical target; samples without a value are
    left out; both outliers and inliers must occur."""
    if column not in table.columns:
        raise UserError(f"outlier column '{column}' not found (available: {', '.join(map(str, table.columns))})")
    series = table[column]
    mask = series.notna().to_numpy()
    text = series[mask].astype(str).str.strip().str.lower()
    truth = {"1": True, "1.0": True, "true": True, "yes": True, "0": False, "0.0": False, "false": False, "no": False}
    bad = sorted(set(text) - set(truth))
    if bad:
        raise UserError(f"outlier column '{column}' must hold 1/0 or true/false, found {', '.join(bad[:5])}")
    values = np.zeros(len(series), dtype=bool)
    values[mask] = text.map(truth).to_numpy(dtype=bool)
    if values[mask].all() or not values[mask].any():
        raise UserError(f"outlier column '{column}' needs both outliers (1) and inliers (0) among the samples")
    return Target(column, CATEGORICAL, values, mask)


def group_codes_of(table: pd.DataFrame, column: str) -> np.ndarray:
    """Integer group codes of a column (of labels or sample IDs); missing values form their own groups."""
    if column not in table.columns:
        raise UserError(f"group column '{column}' not found (available: {', '.join(map(str, table.columns))})")
    values = table[column].astype(object).where(table[column].notna(), None).to_numpy()
    keys = [f"\0missing{i}" if v is None else str(v) for i, v in enumerate(values)]
    return np.unique(keys, return_inverse=True)[1]


def _make_target(
    series: pd.Series, name: str, kind: str, min_class_size: int, min_samples: int
) -> tuple[Target | None, str | None]:
    mask = series.notna().to_numpy()
    if kind == CONTINUOUS:
        values = pd.to_numeric(series, errors="coerce")
        if values[mask].isna().any():
            return None, "given as continuous but holds non-numeric values"
        values = values.to_numpy(dtype=float)
        if mask.sum() < min_samples:
            return None, f"only {int(mask.sum())} samples with a value (need {min_samples})"
        if np.nanstd(values[mask]) == 0:
            return None, "constant value"
        return Target(name, kind, values, mask), None
    values = series.astype(object).where(series.notna(), None).map(lambda v: None if v is None else str(v))
    values = values.to_numpy()
    classes, counts = np.unique(values[mask].astype(str), return_counts=True)
    if len(classes) < 2:
        only = f" ('{classes[0]}')" if len(classes) else ""
        return None, f"a single class{only} among the {int(mask.sum())} samples with latents"
    rare = classes[counts < min_class_size]
    note = None
    if len(rare):
        mask = mask & ~np.isin(values.astype(str), rare)
        note = f"{len(rare)} class(es) with fewer than {min_class_size} samples left out"
        if len(classes) - len(rare) < 2:
            return None, f"fewer than 2 classes with at least {min_class_size} samples"
    return Target(name, kind, values, mask, note), None


def _label_columns(table: pd.DataFrame, reserved: list[str]) -> list[str]:
    return [c for c in table.columns if c not in SAMPLE_COLUMNS and c not in reserved]


def _examples(values: pd.Series, k: int = 3) -> str:
    return "[" + ", ".join(repr(v) for v in pd.unique(values.astype(str))[:k]) + "]"
