"""Fold files: which patients are in train, val and test.

CSV (the ancestor's format): columns train,val,test, one row per fold, each cell
a Python-literal list of patient IDs, parsed with ``ast.literal_eval`` (never
``eval``) and matched exactly as strings. JSON: a list of {"train", "val",
"test"} objects (or {"folds": [...]}). An empty foldCSV (or 0) means every split
is the whole file, for inference on a whole cohort.
"""

from __future__ import annotations

import ast
import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from Engineering.errors import UserError

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Fold:
    train: tuple[str, ...] | None  # None = every patient in the file
    val: tuple[str, ...] | None
    test: tuple[str, ...] | None

    def ids(self, split: str) -> tuple[str, ...] | None:
        return getattr(self, split)


WHOLE_FILE = Fold(None, None, None)


def is_whole_file(fold_ref) -> bool:
    return fold_ref in (None, "", 0, "0", "none", "None")


def _as_ids(cell, where: str) -> tuple[str, ...]:
    if isinstance(cell, (list, tuple)):
        values = cell
    elif isinstance(cell, str):
        try:
            values = ast.literal_eval(cell.strip()) if cell.strip() else []
        except (ValueError, SyntaxError):
            raise UserError(
                f"{where}: cannot read the patient list {cell[:60]!r} (expected e.g. ['1001', '1002'])"
            ) from None
    elif cell is None or (isinstance(cell, float) and pd.isna(cell)):
        values = []
    else:
        raise UserError(f"{where}: expected a list of patient IDs, got {cell!r}")
    if isinstance(values, (str, int)):
        values = [values]
    if not isinstance(values, (list, tuple)):
        raise UserError(f"{where}: expected a list of patient IDs, got {type(values).__name__}")
    return tuple(str(v) for v in values)


def read_fold(path: str | Path, fold_id: int) -> Fold:
    """Read row ``fold_id`` of a fold CSV or JSON file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"fold file not found: {path}")
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(path.read_text())
            rows = data["folds"] if isinstance(data, dict) else data
        else:
            rows = pd.read_csv(path, dtype=str, keep_default_na=False).to_dict("records")
    except (json.JSONDecodeError, KeyError, pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as exc:
        raise UserError(
            f"fold file {path} is unreadable: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
        ) from None
    if not isinstance(rows, list) or not rows:
        raise UserError(f"fold file {path} holds no folds")
    bad = [i for i, r in enumerate(rows) if not isinstance(r, dict)]
    if bad:
        raise UserError(
            f"fold file {path}: fold {bad[0]} is {rows[bad[0]]!r}, not an object with train, val and "
            "test lists of patient IDs"
        )
    missing = [s for s in SPLITS if s not in rows[0]]
    if missing:
        raise UserError(f"fold file {path} lacks column(s) {', '.join(missing)} (needs train,val,test)")
    if not 0 <= fold_id < len(rows):
        raise UserError(f"foldID {fold_id} is out of range: {path} has {len(rows)} fold(s)")
    row = rows[fold_id]
    fold = Fold(*(_as_ids(row[s], f"{path.name} fold {fold_id} column {s}") for s in SPLITS))
    check_disjoint({s: fold.ids(s) or () for s in SPLITS}, f"fold file {path} fold {fold_id}")
    return fold


def check_disjoint(fold: dict, where: str) -> None:
    """A patient in two splits of one fold leaks: a test score on subjects the model trained on (or was selected
    on) is not a held-out score. Refused, naming the patients, for files we read and files we write."""
    for i, a in enumerate(SPLITS):
        for b in SPLITS[i + 1 :]:
            both = sorted(set(map(str, fold.get(a) or ())) & set(map(str, fold.get(b) or ())))
            if both:
                raise UserError(
                    f"{where}: {len(both)} patient(s) are in both '{a}' and '{b}' (e.g. "
                    f"{', '.join(both[:5])}); a patient belongs to one split of a fold (for the whole "
                    "file in every split, use json§foldCSV 0)"
                )
