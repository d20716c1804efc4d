"""main_pointcloud end to end on a tiny cell cohort's clouds: both encoders train (every logged loss term), write
one latent row per cloud through the output contract, the VN run's code is invariant to rotating the test clouds,
and malformed point-cloud files are refused with one line naming the culprit."""
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

TINY = ["--batch_size", "4", "--n_train_batches", "2", "--n_val_batches", "1", "--no-progress_bar", "--no-tbactive",
        "--latent_dim", "8", "--model§PointCloud§width", "4", "--model§PointCloud§k", "8", "--model§PointCloud§grid", "6"]


@pytest.fixture(scope="module")
def tiny_cells(tmp_path_factory):
    return write_cells(tmp_path_factory.mktemp("cells") / "c", CellSpec(n_cells=12, n_puncta=6, n_points=36))


def _args(cells, save, *extra):
    return [*TINY, "--json§datadir", str(cells), "--json§save_path", str(save),
            "--json§DS_phenotypes§path", str(cells / "phenotypes.tsv"),
            "--json§DS_covariates§path", str(cells / "covariates.tsv"), *extra]


@pytest.mark.parametrize("encoder", ["vn", "dgcnn"])
def test_point_cloud_autoencoders_train_and_write_latents(encoder, tiny_cells, tmp_path):
    from Engineering.Engines.saved_runs import load_run

    run(_args(tiny_cells, tmp_path, "--fulltrainID", encoder, "--num_epochs", "2", "--model§PointCloud§encoder",
              encoder), registry.get("pointcloud"))
    log = pd.read_csv(tmp_path / encoder / "csv_logs" / "metrics.csv")
    for term in ("train_loss_epoch", "val_loss"):
        values = log[term].dropna().to_numpy()
        assert len(values) == 2 and np.isfinite(values).all() and (values > 0).all(), (term, values)
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
        run(_args(tmp_path / "nowhere", tmp_path, "--fulltrainID", "y", "--num_epochs", "1"), registry.get("pointcloud"))
