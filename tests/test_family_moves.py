"""A model family is its folder: moved out of the repository as it is, it runs as a plug-in with no edit anywhere.

A copy of the library (Engineering/, Executors/, Configs/) has its RotInv family folder moved to a plug-in folder
outside it; nothing else is edited. The registry then finds no built-in ``rotinv``, ``--plugins`` imports the
moved folder, its ``__init__`` registers the task, and ``main_rotinv.py`` trains, tests and writes the output
contract from it.
"""

from __future__ import annotations

import filecmp
import shutil
import subprocess
import sys

import h5py
import yaml

from tests.conftest import REPO

TINY = [
    "--batch_size",
    "4",
    "--num_epochs",
    "1",
    "--n_train_batches",
    "1",
    "--n_val_batches",
    "1",
    "--no-is3D",
    "--input_shape",
    "32,32",
    "--latent_dim",
    "4",
    "--model§RotInv§width",
    "2",
    "--model§RotInv§depth",
    "2",
    "--datajson_path",
    "Configs/dataNpath_demo.json",
    "--no-progress_bar",
    "--no-tbactive",
]


def _copy_tree(src, dst):
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


def test_a_family_folder_moved_out_of_the_repository_runs_as_a_plugin(tiny_demo, tmp_path):
    lib, plugins = tmp_path / "lib", tmp_path / "plugins"
    for part in ("Engineering", "Executors", "Configs"):
        _copy_tree(REPO / part, lib / part)
    plugins.mkdir()
    shutil.move(lib / "Engineering" / "Engines" / "WarpDrives" / "RotInv", plugins / "rotinv_family")
    # nothing but the move: every other file of the copy is the repository's
    cmp = filecmp.dircmp(
        REPO / "Engineering" / "Engines" / "WarpDrives",
        lib / "Engineering" / "Engines" / "WarpDrives",
        ignore=["__pycache__"],
    )
    assert cmp.left_only == ["RotInv"] and not cmp.right_only and not cmp.diff_files
    proc = subprocess.run(
        [
            sys.executable,
            str(lib / "Executors" / "main_rotinv.py"),
            "--plugins",
            "rotinv_family",
            *TINY,
            "--json§datadir",
            str(tiny_demo),
            "--json§save_path",
            str(tmp_path / "runs"),
            "--fulltrainID",
            "moved",
        ],
        cwd=lib,
        capture_output=True,
        text=True,
        timeout=600,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "HF_HUB_OFFLINE": "1", "PYTHONPATH": f"{lib}:{plugins}"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / "runs" / "moved" / "Output"
    with h5py.File(out / "emb.h5") as h5:
        assert h5.attrs["latent_dim"] == 4 and h5.attrs["n_samples"] > 0
    saved = yaml.safe_load((out.parent / "resolved_config.yaml").read_text())
    assert saved["model"]["drive"] == "RotInv"
    # without --plugins the copy has no rotinv task: the folder was the whole family
    proc = subprocess.run(
        [sys.executable, str(lib / "Executors" / "main.py"), "--task", "rotinv", "--print_config"],
        cwd=lib,
        capture_output=True,
        text=True,
        timeout=300,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PYTHONPATH": str(lib)},
    )
    assert proc.returncode == 2 and "unknown task 'rotinv'" in proc.stderr
