"""main_rotinv end to end: on a tiny 3D cell cohort (group O) and on the 2D demo (group C4), every logged loss
term, the latents through the output contract, the trained encoder's code invariant to the group's rotations of
the test volumes, and a non-square input refused with one line."""

from __future__ import annotations

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
    "--model§RotInv§width",
    "2",
    "--model§RotInv§depth",
    "2",
]


@pytest.fixture(scope="module")
def tiny_cells(tmp_path_factory):
    return write_cells(tmp_path_factory.mktemp("cells") / "c", CellSpec(n_cells=12, n_puncta=6, n_points=32))


def _cells_args(cells, save):
    return [
        "--json§datadir",
        str(cells),
        "--json§save_path",
        str(save),
        "--json§DS_covariates§path",
        str(cells / "covariates.tsv"),
    ]  # (main_rotinv reads no phenotype table)


def test_rotinv_trains_on_3d_cells_with_an_invariant_code(tiny_cells, tmp_path):
    from Engineering.Engines.saved_runs import load_run

    run([*TINY, *_cells_args(tiny_cells, tmp_path), "--fulltrainID", "r", "--num_epochs", "2"], registry.get("rotinv"))
    log = pd.read_csv(tmp_path / "r" / "csv_logs" / "metrics.csv")
    for term in ("train_loss_epoch", "val_loss"):
        values = log[term].dropna().to_numpy()
        assert len(values) == 2 and np.isfinite(values).all() and (values > 0).all(), (term, values)
    table = pd.read_parquet(tmp_path / "r" / "Output" / "emb.parquet")
    assert len([c for c in table.columns if c.startswith("Z")]) == 8 and len(table) > 0
    assert np.isfinite(table.filter(like="Z").to_numpy()).all()
    engine = load_run(tmp_path / "r").engine.eval()
    g = engine.net.group
    assert g.name == "O"
    x = torch.randn(2, 2, 32, 32, 32)
    with torch.no_grad():
        z = engine.net.encode(x)
        for k in (1, 7, 23):
            assert ((engine.net.encode(g.act(k, x)) - z).norm() / z.norm()) < 1e-4
    # the pose output (the benchmark's pose_equivariance_error) is exactly equivariant to the group's rotations
    from Engineering.Eval.rotation import pose_equivariance_error

    def pose(a):
        with torch.no_grad():
            return engine.pose(torch.from_numpy(a), False).numpy()

    exact = pose_equivariance_error(pose, x.numpy(), 3, 20, 0, rotations=np.stack(g.mats).astype(float))
    assert exact.value == 0 and exact.n == 2


def test_rotinv_runs_in_2d_and_refuses_a_non_square_input(tiny_demo, tmp_path):
    args = [
        *TINY,
        "--json§datadir",
        str(tiny_demo),
        "--json§save_path",
        str(tmp_path),
        "--datajson_path",
        "Configs/dataNpath_demo.json",
        "--no-is3D",
        "--input_shape",
        "32,32",
    ]
    run([*args, "--fulltrainID", "flat", "--num_epochs", "1"], registry.get("rotinv"))
    assert (tmp_path / "flat" / "Output" / "emb.parquet").is_file()
    # main_benchmark --run: the model-dependent families of a model with a decoder
    import importlib.util
    import json

    from tests.conftest import REPO

    spec = importlib.util.spec_from_file_location("bench", REPO / "Executors" / "main_benchmark.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    bench.main(
        [
            "--latents",
            f"ri={tmp_path / 'flat'}",
            "--run",
            f"ri={tmp_path / 'flat'}",
            "--labels",
            str(tiny_demo / "phenotypes.tsv"),
            "--label_cols",
            "ef_class",
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
            "--run_max_samples",
            "6",
        ]
    )
    m = json.loads((tmp_path / "b" / "metrics.json").read_text())["ri"]
    assert m["evolution_energy"]["value"] >= 1 - 1e-9  # a path is never shorter than its chord
    assert m["interpolation_distance"]["value"] >= 0 and m["rotation_invariance"]["value"] >= 0
    assert m["parameters_M"]["value"] > 0 and m["rotation_sensitivity"]["value"] < 1e-3  # C4-invariant
    assert 0 <= m["pose_equivariance_error"]["value"] <= 180  # arbitrary angles: C4 poses are 90° apart
    for family in ("latent_usage_swap", "latent_usage_mean"):  # the canonical decoder, posed by x's own pose
        assert np.isfinite(m[family]["value"]) and "error with own latent" in m[family]["note"], m[family]
    with pytest.raises(UserError, match="square image or a cubic volume"):
        run([*args, "--fulltrainID", "bad", "--num_epochs", "1", "--input_shape", "32,16"], registry.get("rotinv"))
