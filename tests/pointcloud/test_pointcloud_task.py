"""main_pointcloud end to end on a tiny cell cohort's clouds: both encoders train (Chamfer and Earth Mover's
loss; every logged loss term), write one latent row per cloud through the output contract, the VN run's code is
invariant to rotating the test clouds, main_benchmark --run scores both with point-cloud rotations (and the
cohort's planted outliers), and malformed point-cloud files are refused with one line naming the culprit."""

from __future__ import annotations

import h5py
import numpy as np
import pandas as pd
import pytest
import torch

from Engineering.data.cells import CellSpec, write_cells
from Engineering.Engines import registry
from Engineering.Engines.MainEngine import run
from Engineering.errors import UserError

TINY = [
    "--batch_size",
    "4",
    "--n_train_batches",
    "2",
    "--n_val_batches",
    "1",
    "--no-progress_bar",
    "--no-tbactive",
    "--latent_dim",
    "8",
    "--model§PointCloud§width",
    "4",
    "--model§PointCloud§k",
    "8",
    "--model§PointCloud§grid",
    "6",
]


@pytest.fixture(scope="module")
def tiny_cells(tmp_path_factory):
    return write_cells(tmp_path_factory.mktemp("cells") / "c", CellSpec(n_cells=12, n_puncta=6, n_points=36))


def _args(cells, save, *extra):
    return [*TINY, "--json§datadir", str(cells), "--json§save_path", str(save), *extra]  # (reads no label table)


@pytest.mark.parametrize("encoder, loss", [("vn", "chamfer"), ("dgcnn", "emd")])
def test_point_cloud_autoencoders_train_and_write_latents(encoder, loss, tiny_cells, tmp_path):
    from Engineering.Engines.saved_runs import load_run

    run(
        _args(
            tiny_cells,
            tmp_path,
            "--fulltrainID",
            encoder,
            "--num_epochs",
            "2",
            "--model§PointCloud§encoder",
            encoder,
            "--model§PointCloud§loss",
            loss,
        ),
        registry.get("pointcloud"),
    )
    log = pd.read_csv(tmp_path / encoder / "csv_logs" / "metrics.csv")
    for term in ("train_loss_epoch", "val_loss", "val_chamfer", "val_emd"):
        values = log[term].dropna().to_numpy()
        assert len(values) == 2 and np.isfinite(values).all() and (values > 0).all(), (term, values)
    np.testing.assert_allclose(log["val_loss"].dropna(), log[f"val_{loss}"].dropna())  # the loss chosen
    table = pd.read_parquet(tmp_path / encoder / "Output" / "emb.parquet")
    from ast import literal_eval

    test = set(literal_eval(pd.read_csv(tiny_cells / "folds.csv")["test"][0]))
    assert set(table["patientID"]) == test and len(table) == len(test)  # one row per test cloud
    assert len([c for c in table.columns if c.startswith("Z")]) == 8
    if encoder == "vn":
        engine = load_run(tmp_path / encoder).engine.eval()
        with h5py.File(tiny_cells / "points.h5") as h5:
            pid = sorted(test)[0]
            x = torch.from_numpy(h5[f"{pid}/cell/1/primary_cell_0"][()]).T[None]  # (1, F, N) as shipped
        from scipy.spatial.transform import Rotation

        rot = torch.from_numpy(Rotation.random(random_state=0).as_matrix()).float()
        moved = x.clone()
        moved[:, :3] = (x[:, :3].transpose(1, 2) @ rot.T).transpose(1, 2)
        with torch.no_grad():
            z, zr = engine.embed(x, False), engine.embed(moved, False)
        assert (zr - z).norm() / z.norm() < 1e-3


def test_main_benchmark_scores_point_cloud_runs_with_their_own_rotations(tiny_cells, tmp_path):
    """Both encoders through main_benchmark --run: random SO(3) rotations of the clouds leave the VN code and its
    pose equivariant to float precision and move the DGCNN code; DGCNN has no pose; latent usage is scored by
    Chamfer; image-only families are skipped with the reason; --outlier_col scores a marked column."""
    import importlib.util
    import json

    from tests.conftest import REPO

    cells = write_cells(tmp_path / "cells", CellSpec(n_cells=24, n_puncta=6, n_points=36))  # 2 planted outliers
    for encoder in ("vn", "dgcnn"):  # latents of every cell (the outlier scores need > 20 samples)
        run(
            _args(
                cells,
                tmp_path,
                "--fulltrainID",
                encoder,
                "--num_epochs",
                "1",
                "--model§PointCloud§encoder",
                encoder,
                "--json§foldCSV",
                "none",
            ),
            registry.get("pointcloud"),
        )
    n = len(pd.read_parquet(tmp_path / "vn" / "Output" / "emb.parquet"))
    spec = importlib.util.spec_from_file_location("bench", REPO / "Executors" / "main_benchmark.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    runs = [f"{e}={tmp_path / e}" for e in ("vn", "dgcnn")]
    bench.main(
        [
            "--latents",
            *runs,
            "--run",
            *runs,
            "--labels",
            str(cells / "phenotypes.tsv"),
            "--label_cols",
            "rule",
            "--outlier_col",
            "outlier",
            "--out",
            str(tmp_path / "b"),
            "--n_boot",
            "20",
            "--n_perm",
            "5",
            "--n_splits",
            "2",
            "--n_repeats",
            "1",
        ]
    )
    m = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert m["vn"]["rotation_invariance"]["value"] < 1e-3 < m["dgcnn"]["rotation_invariance"]["value"]
    assert m["vn"]["pose_equivariance_error"]["value"] < 0.1  # degrees
    assert "no pose output" in m["dgcnn"]["pose_equivariance_error"]["skipped"]
    for name in ("vn", "dgcnn"):
        assert "Chamfer" in m[name]["reconstruction_mse"]["skipped"]
        assert "point clouds" in m[name]["rotation_sensitivity"]["skipped"]
        assert np.isfinite(m[name]["latent_usage_swap"]["value"]) and m[name]["evolution_energy"]["value"] >= 1 - 1e-9
        assert 0 <= m[name]["outlier_auroc/outlier"]["value"] <= 1 and m[name]["outlier_auroc/outlier"]["n"] == n == 24
    assert "outlier_auroc/outlier" in m["baseline_random"] and "probe_balanced_accuracy/outlier" not in m["vn"]


def test_malformed_point_cloud_files_are_named(tiny_cells, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    for name in ("folds.csv", "phenotypes.tsv", "covariates.tsv"):
        (bad / name).write_text((tiny_cells / name).read_text())
    with h5py.File(tiny_cells / "points.h5") as src, h5py.File(bad / "points.h5", "w") as dst:
        for pid in src:
            dst.create_dataset(f"{pid}/cell/1/primary_cell_0", data=src[f"{pid}/cell/1/primary_cell_0"][()])
        first = sorted(src)[0]
        del dst[f"{first}/cell/1/primary_cell_0"]
        dst.create_dataset(f"{first}/cell/1/primary_cell_0", data=np.zeros((36, 5), np.float32))
    with pytest.raises(UserError, match=rf"{first}/cell/1/primary_cell_0 has shape \(36, 5\)"):
        run(_args(bad, tmp_path, "--fulltrainID", "x", "--num_epochs", "1"), registry.get("pointcloud"))
    with pytest.raises(UserError, match="point-cloud file not found"):
        run(
            _args(tmp_path / "nowhere", tmp_path, "--fulltrainID", "y", "--num_epochs", "1"), registry.get("pointcloud")
        )
