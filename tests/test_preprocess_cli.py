"""The preprocess tools share one command-line skeleton (preprocess/cli.py): an ArgParser each, the common
flags spelled the same, a bad flag one ``error:`` line and exit 2, and a batch that converts nothing leaves
every output unchanged."""

from __future__ import annotations

import importlib

import h5py
import numpy as np
import pytest

from Engineering.errors import ArgParser
from tests.conftest import run_main, run_tool

WRITE_HDF5 = ("dicom_to_h5", "nifti_to_h5", "crop_h5")
TOOLS = WRITE_HDF5 + ("make_masks", "make_folds", "validate_h5", "make_demo_dataset", "make_point_clouds")


def flags(parser) -> set[str]:
    return {opt for action in parser._actions for opt in action.option_strings}


@pytest.mark.parametrize("tool", TOOLS)
def test_every_tool_has_the_shared_parser_and_flags(tool):
    parser = importlib.import_module(f"preprocess.{tool}").build_parser()
    assert isinstance(parser, ArgParser)
    assert "--debug" in flags(parser)
    assert ("--compression" in flags(parser)) == (tool in WRITE_HDF5)
    assert ("--out" in flags(parser)) == (tool != "validate_h5")


@pytest.mark.parametrize("tool", TOOLS)
def test_a_bad_flag_is_one_line_and_exit_2(tool, capsys):
    assert run_main(tool, "--no-such-flag") == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: ")


def test_the_script_entry_point_exits_2_with_one_line(tmp_path):
    proc = run_tool("crop_h5", tmp_path / "x.h5", "--out", tmp_path / "y.h5", "--size", "4", "4", "--bogus")
    assert proc.returncode == 2 and proc.stderr.strip() == "error: unrecognized arguments: --bogus"


def test_nothing_cropped_leaves_both_outputs_unchanged(tmp_path, capsys):
    data, masks = tmp_path / "data.h5", tmp_path / "meta_mask.h5"
    for path in (data, masks):
        with h5py.File(path, "w") as h5:
            h5["p/f/0/primary"] = np.ones((4, 4))  # not 5D: every dataset fails
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    assert run_main("crop_h5", data, "--out", out_dir / "data.h5", "--size", "2", "2") == 2
    assert capsys.readouterr().err.strip().endswith(f"error: no dataset could be cropped in {data}")
    assert list(out_dir.iterdir()) == []
