"""Put several runs' latents on one common set of samples.

Runs are only comparable on the same samples, so the benchmark keeps the
samples present in every run (after an optional key filter and an optional
per-patient average for runs of different granularity, e.g. per-slice vs
per-volume models). A sample is one row of the flat table
(patientID, fieldID, instanceID, key, c, t, s), or one patient with
``aggregate="patient"``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from Engineering.data.layout import SAMPLE_COLUMNS
from Engineering.errors import UserError
from Engineering.io.latents import latent_arrays

AGGREGATIONS = ("none", "patient")


@dataclass
class SampleSet:
    ids: pd.DataFrame  # one row per common sample, in the order of every Z below
    latents: dict[str, np.ndarray]  # run name -> (n_samples, latent_dim)
    # Rows of the first run behind each sample (several per patient when aggregated), with
    # ``sample_index`` into ``ids``: what raw pixels must be read for, and averaged over.
    source_rows: pd.DataFrame
    notes: list[str] = field(default_factory=list)


def sample_columns(aggregate: str) -> list[str]:
    return ["patientID"] if aggregate == "patient" else list(SAMPLE_COLUMNS)


def align_runs(runs: dict[str, pd.DataFrame], aggregate: str = "none", keys: list[str] | None = None) -> SampleSet:
    """Common samples of all runs, each run's latents in that order."""
    if aggregate not in AGGREGATIONS:
        raise UserError(f"unknown aggregation '{aggregate}' (choose from {', '.join(AGGREGATIONS)})")
    cols = sample_columns(aggregate)
    notes: list[str] = []
    per_run: dict[str, tuple[pd.DataFrame, np.ndarray]] = {}
    first_rows = None
    for name, df in runs.items():
        if keys:
            df = df[df["key"].isin(keys)]
            if df.empty:
                raise UserError(f"run '{name}' has no latents for key(s) {', '.join(keys)}")
        ids, Z = latent_arrays(df)
        _check_finite(name, ids, Z)
        _check_unique(name, ids)
        if first_rows is None:
            first_rows = ids[list(SAMPLE_COLUMNS)]
        per_run[name] = aggregate_latents(ids, Z, cols)

    common = None
    for ids, _ in per_run.values():
        keys_here = ids[cols].drop_duplicates()
        common = keys_here if common is None else common.merge(keys_here, on=cols)
    if common is None or common.empty:
        hint = "" if aggregate == "patient" else " (runs of different granularity: try --aggregate patient)"
        raise UserError(f"the runs share no samples{hint}")
    common = common.sort_values(cols, kind="stable").reset_index(drop=True)

    latents = {}
    for name, (ids, Z) in per_run.items():
        # An inner merge keeps the order of its left side: the common samples.
        pos = common.merge(ids[cols].reset_index(), on=cols)["index"].to_numpy()
        if len(pos) < len(ids):
            notes.append(
                f"run '{name}': {len(ids) - len(pos)} of {len(ids)} samples are not in every run and were left out"
            )
        latents[name] = Z[pos]

    source = first_rows.merge(common.reset_index().rename(columns={"index": "sample_index"}), on=cols)
    return SampleSet(common, latents, source.reset_index(drop=True), notes)


def aggregate_latents(ids: pd.DataFrame, Z: np.ndarray, cols: list[str]) -> tuple[pd.DataFrame, np.ndarray]:
    """Mean latent per sample key ``cols`` (identity when ``cols`` already identify rows)."""
    if cols == list(SAMPLE_COLUMNS):
        return ids[cols].reset_index(drop=True), Z
    return aggregate_rows(ids[cols], Z, cols)


def aggregate_rows(ids: pd.DataFrame, X: np.ndarray, cols: list[str]) -> tuple[pd.DataFrame, np.ndarray]:
    """Mean of the rows of ``X`` sharing the same ``cols`` values, keys in sorted order."""
    codes = ids.groupby(cols, sort=True).ngroup().to_numpy()  # group numbers follow the sorted keys
    keys = ids[cols].drop_duplicates().sort_values(cols, kind="stable").reset_index(drop=True)
    sums = np.zeros((len(keys), X.shape[1]))
    np.add.at(sums, codes, X)
    return keys, sums / np.bincount(codes, minlength=len(keys))[:, None]


def _check_finite(name: str, ids: pd.DataFrame, Z: np.ndarray) -> None:
    bad = ~np.isfinite(Z).all(axis=1)
    if bad.any():
        row = ids.loc[np.flatnonzero(bad)[0]]
        where = "/".join(str(row[c]) for c in ("patientID", "fieldID", "instanceID", "key"))
        raise UserError(
            f"run '{name}': {int(bad.sum())} of {len(Z)} latent rows contain NaN or inf "
            f"(first: {where} c={row['c']} t={row['t']} s={row['s']})"
        )


def _check_unique(name: str, ids: pd.DataFrame) -> None:
    dup = ids.duplicated(list(SAMPLE_COLUMNS))
    if dup.any():
        row = ids.loc[np.flatnonzero(dup.to_numpy())[0]]
        raise UserError(
            f"run '{name}': {int(dup.sum())} duplicate latent rows (first: patient {row['patientID']} "
            f"key {row['key']} c={row['c']} t={row['t']} s={row['s']})"
        )
