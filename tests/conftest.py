"""Shared fixtures: an isolated cache (demo data, sample index) and offline Hugging Face."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import settings

REPO = Path(__file__).resolve().parents[1]

# Property tests draw the same examples on every run (a CI result is reproducible); set
# HYPOTHESIS_PROFILE=explore to search new ones (with more examples: see tests/test_properties.py).
settings.register_profile("default", derandomize=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    cache = tmp_path_factory.mktemp("imlatent_cache")
    old = {k: os.environ.get(k) for k in ("IMLATENT_CACHE", "HF_HUB_OFFLINE")}
    os.environ["IMLATENT_CACHE"] = str(cache)
    os.environ["HF_HUB_OFFLINE"] = "1"
    yield cache
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def demo_dir(_isolated_cache):
    from Engineering.data.demo import DemoSpec, write_demo

    return write_demo(Path(_isolated_cache) / "demo", DemoSpec())


def run_executor(script: str, *args: str, cwd: Path | None = None, timeout: int = 600, env: dict | None = None):
    """Run an executor as users do; returns the CompletedProcess (text mode)."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, str(REPO / "Executors" / script), *args],
        cwd=cwd or REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
    )


@pytest.fixture(scope="session")
def tiny_demo(_isolated_cache):
    """A small demo cohort (12 patients, 4 frames of 32x32) for fast end-to-end runs."""
    from Engineering.data.demo import DemoSpec, write_demo

    return write_demo(Path(_isolated_cache) / "tiny_demo", DemoSpec(n_patients=12, n_frames=4, size=32, n_folds=3))


@pytest.fixture(scope="session")
def tiny_demo_mc(_isolated_cache):
    """The tiny demo's 3-channel variant (phantom, membrane and nucleus stains, per-site stain gains)."""
    from Engineering.data.demo import DemoSpec, write_demo

    return write_demo(
        Path(_isolated_cache) / "tiny_demo_mc", DemoSpec(n_patients=12, n_frames=4, size=32, n_folds=3, channels=3)
    )


# A DiffAE small enough for CPU tests in seconds.
TINY_DIFFAE = [
    "--latent_dim",
    "8",
    "--batch_size",
    "4",
    "--num_epochs",
    "1",
    "--n_train_batches",
    "2",
    "--n_val_batches",
    "2",
    "--model§DiffAE§net_ch",
    "8",
    "--model§DiffAE§ch_mult",
    "[1,2]",
    "--model§DiffAE§enc_ch_mult",
    "[1,2]",
    "--model§DiffAE§num_res_blocks",
    "1",
    "--model§DiffAE§enc_num_res_blocks",
    "1",
    "--model§DiffAE§attn_res",
    "[8]",
    "--model§DiffAE§T_eval",
    "3",
    "--model§DiffAE§T_inv",
    "3",
    "--model§DiffAE§T_step",
    "3",
    "--no-progress_bar",
    "--no-tbactive",
    "--input_shape",
    "32,32",
]


def tiny_args(demo: Path, save: Path, *extra: str) -> list[str]:
    return [*TINY_DIFFAE, "--json§datadir", str(demo), "--json§save_path", str(save), *extra]


def run_tool(tool: str, *args) -> subprocess.CompletedProcess:
    """Run a preprocess/ tool as users do (a subprocess); text output."""
    return subprocess.run(
        [sys.executable, str(REPO / "preprocess" / f"{tool}.py"), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def run_main(tool: str, *args) -> int:
    """Run a preprocess/ tool's main in-process (faster than a subprocess); returns the exit code."""
    import importlib

    from Engineering.errors import run_cli

    module = importlib.import_module(f"preprocess.{tool}")
    return run_cli(module.main, [str(a) for a in args])


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models gain nothing from a second intra-op thread, and on a busy 2-core machine its
    synchronisation makes them several times slower; the setting is restored afterwards."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="session")
def tiny_cells(_isolated_cache):
    """A tiny cell cohort (18 cells of 16^3 voxels, 32 points each): 3D images and point clouds in seconds (2
    validation cells: a contrastive loss needs two)."""
    from Engineering.data.cells import CellSpec, write_cells

    return write_cells(Path(_isolated_cache) / "tiny_cells", CellSpec(n_cells=18, size=16, n_puncta=6, n_points=32))
