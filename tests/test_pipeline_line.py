"""Every run states its data pipeline in one line at the start, and warns where defaults change a user's data
without a word: volumes cut into 2D slices, train = validation = test without a fold file (issue 33, item 5)."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from Engineering.config.loader import resolve
from Engineering.data.datamodule import H5DataModule
from Engineering.Engines import registry
from Engineering.Engines.MainEngine import run
from tests.conftest import tiny_args


@pytest.fixture
def volumes(tmp_path):
    """The issue's case: three 24x40x40 volumes and a JSON without --is3D or a fold file."""
    with h5py.File(tmp_path / "data.h5", "w") as h5:
        for pid in ("1", "2", "3"):
            ds = h5.create_dataset(
                f"{pid}/20208/2/primary",
                data=np.random.default_rng(0).integers(0, 100, (1, 1, 24, 40, 40)).astype(np.int16),
            )
            ds.attrs.update({"min_val": 0, "max_val": 99})
    (tmp_path / "dn.json").write_text(
        json.dumps({"datadir": str(tmp_path), "foldCSV": "", "run_prefix": "v", "save_path": str(tmp_path / "Results")})
    )
    return tmp_path


def _dm(args, task="diffAE"):
    return H5DataModule(resolve(args, registry.get(task)).cfg)


def test_volumes_into_a_2d_model_and_no_folds_are_said(volumes):
    line, warnings = _dm(["--datajson_path", str(volumes / "dn.json")]).pipeline(trains=True)
    # (the issue said "cropped"; 40 x 0.5 = 20 is padded to 32)
    assert (
        line == "data: 3 volumes 24×40×40 → 72 2D samples, resampled ×0.5, padded to 32×32; folds: none, "
        "train = val = test"
    )
    assert any(
        "3 of the 3 datasets are volumes (24×40×40) but the model is 2D" in w and "--is3D" in w for w in warnings
    )
    assert any("train and test are the same 3 patients (json§foldCSV is empty)" in w for w in warnings)
    # a test-only run on the whole file (the documented whole-cohort inference) is not warned about its splits
    assert not any("same" in w for w in _dm(["--datajson_path", str(volumes / "dn.json")]).pipeline(trains=False)[1])


def test_a_3d_model_on_volumes_and_explicit_slices_are_not_warned(volumes):
    js = ["--datajson_path", str(volumes / "dn.json")]
    line, warnings = _dm([*js, "--is3D", "--input_shape", "24,32,32", "--interp_fact", "1"]).pipeline()
    assert line.startswith("data: 3 volumes 24×40×40 → 3 3D samples, cropped to 24×32×32;")
    assert not any("volumes" in w for w in warnings)
    _, warnings = _dm([*js, "--json§DS_split_volume", "true"]).pipeline()
    assert not any("volumes" in w for w in warnings)


def test_the_demo_states_its_folds(tiny_demo):
    line, warnings = _dm(["--json§datadir", str(tiny_demo), "--input_shape", "32,32", "--interp_fact", "1"]).pipeline()
    assert line.startswith(
        "data: 16 images 32×32 (4 frames) → 64 2D samples, at 32×32; folds: folds.csv row 0, patients train "
    )
    assert warnings == []


def test_every_run_prints_the_line_at_start(volumes, capsys, one_thread):
    task = registry.get("diffAE")
    run([*tiny_args(volumes, volumes / "Results"), "--datajson_path", str(volumes / "dn.json"), "--dev_run", "1"], task)
    out = capsys.readouterr().out
    assert (
        "data: 3 volumes 24×40×40 → 72 2D samples, resampled ×0.5, padded to 32×32; folds: none, train = val = "
        "test" in out
    )
    assert "warning: 3 of the 3 datasets are volumes" in out and "warning: train and test are the same" in out


def test_point_cloud_runs_state_their_data_too():
    from Engineering.data.point_datamodule import PointCloudDataModule
    from Engineering.Engines.WarpDrives.PointCloud.engine import PointCloudRun

    spec = registry.get("pointcloud")
    cfg = resolve([], spec).cfg
    line = PointCloudRun(cfg, spec, None).describe(PointCloudDataModule(cfg))
    assert line.startswith("data: ") and " point clouds of " in line and "; folds: " in line
