"""validate_h5: a valid file passes with a summary; each kind of problem is reported, exit code 2."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from preprocess.h5_writer import write_image
from preprocess.validate_h5 import check_file
from tests.conftest import run_main, run_tool


@pytest.fixture()
def valid(tmp_path) -> Path:
    path = tmp_path / "data.h5"
    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as h5:
        for p in ("1000001", "1000002"):
            g = h5.create_group(f"{p}/20208/2")
            write_image(g, "primary_LAX_4Ch", rng.random((1, 5, 1, 8, 8)).astype(np.float32))
            write_image(g, "auxiliary_t1map_transverse_0", (rng.random((2, 1, 3, 8, 8)) + 1j).astype(np.complex64))
    with h5py.File(tmp_path / "meta_mask.h5", "w") as m:
        m.create_dataset("1000001/20208/2/primary_LAX_4Ch", data=np.ones((1, 5, 1, 8, 8), np.uint8))
    return path


def test_valid_file_exit_0_with_summary(valid):
    proc = run_tool("validate_h5", valid)
    assert proc.returncode == 0, proc.stderr
    assert "2 patient(s), 1 field(s), 2 instance(s), 4 dataset(s)" in proc.stdout
    assert "primary_LAX_4Ch" in proc.stdout and "(1, 5, 1, 8, 8)" in proc.stdout
    assert "3 dataset(s) have no mask" in proc.stdout and f"{valid}: valid" in proc.stdout
    assert run_main("validate_h5", valid, "--strict") == 2


def test_each_problem_is_listed(valid):
    with h5py.File(valid, "a") as h5:
        g = h5["1000001/20208/2"]
        g.create_dataset("secondary", data=np.zeros((1, 1, 1, 8, 8)))  # bad key
        g.create_dataset("primary_flat", data=np.zeros((8, 8)))  # not 5D
        g.create_dataset("auxiliary_names", data=np.array([[[[[b"a"]]]]]))  # not numeric
        nan = np.zeros((1, 1, 1, 8, 8), np.float32)
        nan[0, 0, 0, 0, 0] = np.nan
        g.create_dataset("auxiliary_nan", data=nan)
        g["primary_LAX_4Ch"].attrs["max_val"] = 99.0  # disagrees with the data
        h5.create_dataset("1000002/stray", data=np.zeros(3))  # wrong level
    with h5py.File(valid.parent / "meta_mask.h5", "a") as m:
        m.create_dataset("1000002/20208/2/primary_LAX_4Ch", data=np.ones((1, 1, 1, 4, 4), np.uint8))
    proc = run_tool("validate_h5", valid)
    assert proc.returncode == 2
    err = proc.stderr
    for expected in (
        "key 'secondary' is not",
        "primary_flat: 2D",
        "auxiliary_names: dtype |S1 is not numeric",
        "auxiliary_nan: 1 NaN/Inf",
        "max_val=99 but",
        "1000002/stray: dataset at field level",
        "mask shape (1, 1, 1, 4, 4) differs",
    ):
        assert expected in err, expected
    assert err.strip().splitlines()[-1] == f"error: not valid: {valid} (7 problems)"


def test_quick_mode_skips_values(valid):
    with h5py.File(valid, "a") as h5:
        h5["1000001/20208/2/primary_LAX_4Ch"][0, 0, 0, 0, 0] = np.inf
    with h5py.File(valid, "r") as h5:
        assert any("NaN/Inf" in p for p in check_file(h5).problems)
        assert check_file(h5, scan=False).problems == []


def test_not_hdf5_one_line(tmp_path):
    bad = tmp_path / "data.h5"
    bad.write_text("nope")
    proc = run_tool("validate_h5", bad)
    assert proc.returncode == 2 and proc.stderr.strip() == f"error: not an HDF5 file: {bad}"
