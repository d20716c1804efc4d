"""Reading latents (emb.h5 / emb.tsv / emb.parquet / run folder), labels and pixels for the benchmark."""

from __future__ import annotations

import h5py
import numpy as np
import pandas as pd
import pytest

from Engineering.data.labels import (
    CATEGORICAL,
    CONTINUOUS,
    attach_labels,
    infer_kind,
    read_label_table,
    resolve_targets,
)
from Engineering.data.layout import SAMPLE_COLUMNS
from Engineering.errors import UserError
from Engineering.Eval.pixels import read_pixels
from Engineering.Eval.samples import align_runs
from Engineering.io.latents import latent_arrays, read_latents


def flat_table(n_patients=4, n_t=3, dim=5, seed=0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = [
        [str(100 + p), "20208", "2", "primary_cine_0", 0, t, 0, *rng.normal(size=dim)]
        for p in range(n_patients)
        for t in range(n_t)
    ]
    return pd.DataFrame(rows, columns=list(SAMPLE_COLUMNS) + [f"Z{j}" for j in range(dim)])


def write_h5(path, table: pd.DataFrame, n_t: int, missing_t=None) -> None:
    """emb.h5 as the engine writes it: one (C, T, S, L) array per key, NaN where not computed."""
    zc = [c for c in table.columns if c.startswith("Z")]
    with h5py.File(path, "w") as h5:
        h5.attrs.update({"latent_dim": len(zc), "model": "test"})
        for (pid, fid, iid, key), part in table.groupby(["patientID", "fieldID", "instanceID", "key"]):
            arr = np.full((1, n_t, 1, len(zc)), np.nan, np.float32)
            for _, row in part.iterrows():
                if row["t"] != missing_t:
                    arr[row["c"], row["t"], row["s"]] = row[zc].to_numpy(float)
            h5.create_dataset(f"{pid}/{fid}/{iid}/{key}", data=arr)


@pytest.mark.parametrize("fmt", ["parquet", "tsv", "h5"])
def test_read_latents_all_formats_agree(tmp_path, fmt):
    table = flat_table()
    path = tmp_path / f"emb.{fmt}"
    if fmt == "parquet":
        table.to_parquet(path, index=False)
    elif fmt == "tsv":
        table.to_csv(path, sep="\t", index=False)
    else:
        write_h5(path, table, n_t=3)
    df = read_latents(path)
    assert list(df.columns[:7]) == list(SAMPLE_COLUMNS)
    assert df["patientID"].tolist() == table["patientID"].tolist()
    ids, Z = latent_arrays(df)
    assert Z.shape == (12, 5) and ids["t"].dtype.kind == "i"
    np.testing.assert_allclose(Z, table[[f"Z{j}" for j in range(5)]].to_numpy(), rtol=1e-6)


def test_h5_drops_not_computed_rows_and_run_folder_resolves(tmp_path):
    out = tmp_path / "runX" / "Output"
    out.mkdir(parents=True)
    write_h5(out / "emb.h5", flat_table(), n_t=3, missing_t=1)
    df = read_latents(tmp_path / "runX")
    assert len(df) == 8 and 1 not in set(df["t"])


def test_z_columns_sorted_numerically(tmp_path):
    table = flat_table(dim=12)
    table = table[list(SAMPLE_COLUMNS) + [f"Z{j}" for j in (10, 2, 0, 1, 11, 3, 4, 5, 6, 7, 8, 9)]]
    table.to_parquet(tmp_path / "emb.parquet", index=False)
    assert list(read_latents(tmp_path / "emb.parquet").columns[7:]) == [f"Z{j}" for j in range(12)]


def test_latent_read_errors(tmp_path):
    with pytest.raises(UserError, match="not found"):
        read_latents(tmp_path / "nope.parquet")
    (tmp_path / "emb.npy").write_bytes(b"x")
    with pytest.raises(UserError, match="unknown latent format"):
        read_latents(tmp_path / "emb.npy")
    flat_table().drop(columns=[f"Z{j}" for j in range(5)]).to_csv(tmp_path / "emb.tsv", sep="\t", index=False)
    with pytest.raises(UserError, match="no latent columns"):
        read_latents(tmp_path / "emb.tsv")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no emb"):
        read_latents(tmp_path / "empty")


def test_align_runs_keeps_common_samples_in_one_order():
    a = flat_table(n_patients=4)
    b = flat_table(n_patients=3, seed=1).iloc[::-1]  # other order, one patient fewer
    s = align_runs({"a": read_like(a), "b": read_like(b)})
    assert len(s.ids) == 9 and any("left out" in n for n in s.notes)
    za = a.set_index(list(SAMPLE_COLUMNS)).loc[pd.MultiIndex.from_frame(s.ids)].to_numpy()
    np.testing.assert_allclose(s.latents["a"], za, rtol=1e-6)
    patients = align_runs({"a": read_like(a), "b": read_like(b)}, aggregate="patient")
    assert len(patients.ids) == 3 and patients.latents["a"].shape == (3, 5)


def read_like(table: pd.DataFrame) -> pd.DataFrame:
    return table.reset_index(drop=True)


def test_nan_latents_are_a_user_error():
    table = flat_table()
    table.loc[2, "Z1"] = np.nan
    with pytest.raises(UserError, match="NaN"):
        align_runs({"a": table})


def test_labels_id_column_join_and_kinds(tmp_path):
    pd.DataFrame(
        {
            "FID": ["100", "101", "102", "103"],
            "site": ["A", "B", "A", "B"],
            "ef": [0.5, 0.6, 0.55, 0.7],
            "grade": [1, 2, 1, 2],
        }
    ).to_csv(tmp_path / "l.tsv", sep="\t", index=False)
    labels = read_label_table(tmp_path / "l.tsv")
    ids = align_runs({"a": flat_table()}).ids
    table, notes = attach_labels(ids, {"l.tsv": labels})
    assert table["site"].notna().all() and not notes
    assert infer_kind(table["site"]) == CATEGORICAL and infer_kind(table["grade"]) == CATEGORICAL
    assert infer_kind(table["ef"]) == CONTINUOUS
    targets, _ = resolve_targets(table, None, None, ["grade"], [], 2, 4)
    assert {t.name: t.kind for t in targets} == {"site": CATEGORICAL, "ef": CONTINUOUS, "grade": CONTINUOUS}
    with pytest.raises(UserError, match="not found"):
        resolve_targets(table, ["nope"], None, None, [], 2, 4)


def test_no_overlap_with_labels_is_a_user_error(tmp_path):
    pd.DataFrame({"eid": ["9", "8"], "y": [1, 2]}).to_csv(tmp_path / "l.csv", index=False)
    ids = align_runs({"a": flat_table()}).ids
    with pytest.raises(UserError, match="no overlap"):
        attach_labels(ids, {"l.csv": read_label_table(tmp_path / "l.csv")})


def test_read_pixels_indexes_or_takes_whole_axes(tmp_path):
    data = np.arange(2 * 3 * 1 * 2 * 2, dtype=np.float32).reshape(2, 3, 1, 2, 2)
    with h5py.File(tmp_path / "data.h5", "w") as h5:
        h5.create_dataset("100/20208/2/primary", data=data)
    rows = pd.DataFrame(
        {
            "patientID": ["100"] * 2,
            "fieldID": "20208",
            "instanceID": "2",
            "key": "primary",
            "c": [0, 1],
            "t": [0, 0],
            "s": [0, 0],
        }
    )
    # c is indexed (rows use c=1); t is never beyond 0 while the data has 3 frames: taken whole.
    px = read_pixels(tmp_path / "data.h5", rows)
    np.testing.assert_array_equal(px, data[:, :, 0].reshape(2, -1))
    with pytest.raises(UserError, match="no dataset"):
        read_pixels(tmp_path / "data.h5", rows.assign(key="other"))


def test_read_pixels_follows_the_axis_swap(tmp_path):
    """Time as slices (json§DS_slice_dim 1): latent row t indexes the stored slice axis, and the whole cine of that
    slice is the pixel vector (the stored time axis became the volume)."""
    data = np.random.default_rng(0).random((1, 5, 3, 2, 2)).astype(np.float32)  # C, T=5 frames, S=3 slices
    with h5py.File(tmp_path / "data.h5", "w") as h5:
        h5.create_dataset("100/20208/2/primary", data=data)
    rows = pd.DataFrame(
        {
            "patientID": ["100"] * 3,
            "fieldID": "20208",
            "instanceID": "2",
            "key": "primary",
            "c": 0,
            "t": [0, 1, 2],
            "s": 0,
        }
    )
    px = read_pixels(tmp_path / "data.h5", rows, channel_dim=0, slice_dim=1)
    np.testing.assert_array_equal(px, np.stack([data[0, :, t].ravel() for t in range(3)]))
    assert not np.array_equal(read_pixels(tmp_path / "data.h5", rows), px)  # the contract's order reads other frames
