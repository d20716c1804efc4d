"""Phenotype and covariate tables keyed by patient ID (FID, f.eid, patientID or the first column)."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from Engineering.errors import UserError

ID_COLUMNS = ("FID", "f.eid", "eid", "patientID")


def read_table(path: str | Path, columns: list[str] | None = None) -> pd.DataFrame:
    """A table indexed by patient ID (as string) with the selected columns."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"table not found: {path}")
    sep = "," if path.suffix.lower() == ".csv" else "\t"
    try:
        df = pd.read_csv(path, sep=sep, dtype={c: str for c in ID_COLUMNS})
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as exc:
        raise UserError(f"table {path} is unreadable: {exc}") from None
    id_col = next((c for c in ID_COLUMNS if c in df.columns), df.columns[0])
    df[id_col] = df[id_col].astype(str)
    df = df.set_index(id_col)
    df.index.name = "patientID"
    if columns:
        missing = [c for c in columns if c not in df.columns]
        if missing:
            raise UserError(f"table {path} has no column(s) {', '.join(missing)}; it has {', '.join(map(str, df.columns))}")
        df = df[columns]
    return df


class TrainFitScaler:
    """Standardise continuous columns with statistics of the training split only."""

    def fit(self, df: pd.DataFrame, train_ids) -> "TrainFitScaler":
        train = df.loc[df.index.isin(list(train_ids))]
        if train.empty:
            raise UserError("no table rows belong to the training split: cannot fit the scaler")
        self.mean_, self.std_ = train.mean(), train.std(ddof=0).replace(0, 1.0)
        return self

    def transform(self, df: pd.DataFrame) -> pd.DataFrame:
        return (df - self.mean_) / self.std_

    def inverse_transform(self, df: pd.DataFrame) -> pd.DataFrame:
        return df * self.std_ + self.mean_
