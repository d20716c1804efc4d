"""Read latents written by a run (emb.h5 / emb.tsv / emb.parquet) into one flat table.

The flat layout is the output contract's table: one row per computed sample with
``patientID, fieldID, instanceID, key, c, t, s, Z0..Z{L-1}`` (IDs as strings,
c/t/s as ints). emb.h5 holds, per ``patientID/fieldID/instanceID/key``, an array
(n_channel, n_time, n_slice, latent_dim) that is NaN where nothing was computed;
those all-NaN rows are dropped here, partly-NaN rows are kept so that the caller
can report them.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from Engineering.data.layout import INDEX_COLUMNS, KEY_COLUMNS, SAMPLE_COLUMNS, SampleKey, iter_datasets
from Engineering.errors import UserError
from Engineering.io.read_budget import check_bytes, nbytes

_Z_COLUMN = re.compile(r"^Z(\d+)$")
# Searched in this order inside a run folder: parquet is the fastest to read.
_FILE_NAMES = ("emb.parquet", "emb.tsv", "emb.h5")


def z_columns(df: pd.DataFrame) -> list[str]:
    """The latent columns ``Z0..Z{L-1}`` in numeric order (Z10 after Z9)."""
    found = [(int(m.group(1)), c) for c in df.columns if (m := _Z_COLUMN.match(str(c)))]
    return [c for _, c in sorted(found)]


def resolve_latent_file(path: str | Path) -> Path:
    """A latent file from a file path, a run folder (``<run>/Output/emb.*``) or an Output folder."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"latents not found: {path}")
    if path.is_file():
        return path
    outputs = [path / "Output"] if (path / "Output").is_dir() else sorted(path.glob("Output_*"))
    if len(outputs) > 1:
        names = ", ".join(p.name for p in outputs)
        raise UserError(f"{path} has several output folders ({names}); pass the one to use")
    for folder in outputs + [path]:
        for name in _FILE_NAMES:
            if (folder / name).is_file():
                return folder / name
    raise UserError(f"no {'/'.join(_FILE_NAMES)} in {path} or its Output folder")


def read_latents(path: str | Path) -> pd.DataFrame:
    """The flat latent table of an emb.h5 / emb.tsv / emb.csv / emb.parquet file or a run folder."""
    file = resolve_latent_file(path)
    suffix = file.suffix.lower()
    try:
        if suffix == ".parquet":
            import pyarrow.parquet as pq  # the footer declares rows and columns: checked before the read

            meta = pq.ParquetFile(file).metadata
            check_bytes(
                8 * meta.num_rows * meta.num_columns,
                f"{file} ({meta.num_rows} rows x {meta.num_columns} columns as 8-byte values)",
            )
            df = pd.read_parquet(file)
        elif suffix in (".tsv", ".txt", ".csv"):
            sep = "," if suffix == ".csv" else "\t"
            # text declares nothing: its size bounds the numbers it can hold (a value takes >= 2 characters)
            check_bytes(4 * file.stat().st_size, f"{file} ({file.stat().st_size / 2**20:.0f} MiB of text)")
            df = pd.read_csv(file, sep=sep, dtype={c: str for c in KEY_COLUMNS})
        elif suffix in (".h5", ".hdf5"):
            df = _read_h5(file)
        else:
            raise UserError(
                f"unknown latent format '{file.suffix}' for {file} (expected emb.h5, emb.tsv, emb.csv or emb.parquet)"
            )
    except UserError:
        raise
    except (OSError, ValueError, ImportError) as exc:  # unreadable or corrupt file
        raise UserError(f"cannot read latents {file}: {exc}") from exc
    return _normalise(df, file)


def latent_arrays(df: pd.DataFrame, dtype=np.float64) -> tuple[pd.DataFrame, np.ndarray]:
    """(sample IDs, Z matrix) of a flat latent table; rows stay aligned."""
    cols = z_columns(df)
    if not cols:
        raise UserError("the latent table has no Z0..Z{L-1} columns")
    ids = df[[c for c in df.columns if c not in cols]].reset_index(drop=True)
    return ids, df[cols].to_numpy(dtype=dtype)


def _normalise(df: pd.DataFrame, file: Path) -> pd.DataFrame:
    """Check the Z columns, fill optional ID columns and fix their types."""
    cols = z_columns(df)
    if not cols:
        raise UserError(f"{file} has no latent columns Z0..Z{{L-1}} (columns: {', '.join(map(str, df.columns[:10]))})")
    if "patientID" not in df.columns:
        raise UserError(f"{file} has no patientID column")
    df = df.copy()
    # Tables made outside the pipeline may hold one row per patient only.
    for col in KEY_COLUMNS[1:]:
        if col not in df.columns:
            df[col] = "0" if col != "key" else "primary"
    for col in INDEX_COLUMNS:
        if col not in df.columns:
            df[col] = 0
    for col in KEY_COLUMNS:
        missing = df[col].isna().to_numpy() | (df[col].astype(str).str.strip() == "").to_numpy()
        if missing.any():  # would become the patient 'nan' (or '') and be joined with nobody, silently
            raise _first_bad(df[col], missing, col, file, "an ID")
        df[col] = df[col].astype(str).str.strip()
    for col in INDEX_COLUMNS:
        df[col] = _index_column(df[col], col, file)
    for col in cols:
        df[col] = _z_column(df[col], col, file)
    if df.empty:
        raise UserError(f"{file} holds no computed latents")
    return df[list(SAMPLE_COLUMNS) + cols].reset_index(drop=True)


def _first_bad(values: pd.Series, bad: np.ndarray, col: str, file: Path, what: str) -> UserError:
    i = int(np.flatnonzero(bad)[0])
    value = values.iloc[i].item() if hasattr(values.iloc[i], "item") else values.iloc[i]  # 0.5, not np.float64(0.5)
    return UserError(f"{file}: column {col} row {i + 1} is {value!r}, not {what} ({int(bad.sum())} such row(s))")


def _index_column(values: pd.Series, col: str, file: Path) -> pd.Series:
    """A c/t/s index is a whole number >= 0: 1.5 is refused, not truncated to the sample of index 1."""
    num = pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64)
    bad = ~np.isfinite(num) | (num < 0) | (num != np.round(num))
    if bad.any():
        raise _first_bad(values, bad, col, file, "a whole number >= 0")
    return pd.Series(num.astype(np.int64), index=values.index)


def _z_column(values: pd.Series, col: str, file: Path) -> pd.Series:
    """Latent values as float32; an empty cell or NaN is 'not computed', text is refused (not made NaN)."""
    num = pd.to_numeric(values, errors="coerce")
    bad = (num.isna() & values.notna() & ~values.astype(str).str.strip().str.lower().isin(("", "nan"))).to_numpy()
    if bad.any():
        raise _first_bad(values, bad, col, file, "a number")
    return num.astype(np.float32)


def _read_h5(file: Path) -> pd.DataFrame:
    """Flatten emb.h5 (patient/field/instance groups, one (C,T,S,L) array per key)."""
    import h5py  # only needed for this format

    parts: list[pd.DataFrame] = []
    latent_dim, total = None, 0
    with h5py.File(file, "r") as h5:
        for where, ds in iter_datasets(h5):
            if ds.ndim != 4:
                raise UserError(
                    f"{file}:{ds.name} has shape {ds.shape}; expected (n_channel, n_time, n_slice, latent_dim)"
                )
            if latent_dim is not None and ds.shape[-1] != latent_dim:
                raise UserError(f"{file}:{ds.name} has latent_dim {ds.shape[-1]}, others {latent_dim}")
            latent_dim = ds.shape[-1]
            # every array is held (as a float32 table) until the concat copies them all once more
            total += nbytes(ds.shape, np.float32)
            check_bytes(
                2 * total,
                f"{file}: the latent arrays up to {ds.name} (shape {ds.shape})",
                "is this an emb.h5 written by a run?",
            )
            parts.append(_flatten(ds[()], where))
    if not parts:
        raise UserError(f"{file} holds no latent arrays (expected patientID/fieldID/instanceID/key datasets)")
    return pd.concat(parts, ignore_index=True)


def _flatten(arr: np.ndarray, where: SampleKey) -> pd.DataFrame:
    """One row per (c, t, s) that was computed (not all-NaN)."""
    n_c, n_t, n_s, dim = arr.shape
    flat = arr.reshape(-1, dim).astype(np.float32)
    c, t, s = (i.ravel() for i in np.indices((n_c, n_t, n_s)))
    keep = ~np.all(np.isnan(flat), axis=1)
    df = pd.DataFrame(flat[keep], columns=[f"Z{i}" for i in range(dim)])
    df.insert(0, "s", s[keep])
    df.insert(0, "t", t[keep])
    df.insert(0, "c", c[keep])
    for col, val in reversed(list(zip(KEY_COLUMNS, where.ids))):
        df.insert(0, col, val)
    return df
