"""Fault injection (slow; `make test-slow`): kill -9 a training run at random moments (also while it writes a
checkpoint), resume it, and require the same final weights as an uninterrupted run, with --num_workers 2."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch

from Engineering.io.checkpoints import read_checkpoint
from tests.conftest import REPO, tiny_args

pytestmark = pytest.mark.slow


def train_cmd(demo, save, name, *extra, epochs: int = 4) -> list[str]:
    """A tiny DiffAE training with 2 workers and random flips (also used by benchmarks/fault_injection.py)."""
    return [
        sys.executable,
        str(REPO / "Executors" / "main_diffAE.py"),
        *tiny_args(
            demo,
            save,
            "--fulltrainID",
            name,
            "--run_mode",
            "1",
            "--num_epochs",
            str(epochs),
            "--n_train_batches",
            "3",
            "--num_workers",
            "2",
            "--flip_prob",
            "0.5",
            "--data§flip_axes",
            "[0, 1]",
            *extra,
        ),
    ]


def last_weights(save, name):
    return read_checkpoint(save / name / "Checkpoints" / "last.ckpt")["state_dict"]


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_kill_minus_nine_then_resume_is_bit_exact(tiny_demo, tmp_path, seed):
    subprocess.run(train_cmd(tiny_demo, tmp_path, "straight"), check=True, capture_output=True, timeout=600)
    want = last_weights(tmp_path, "straight")
    rng = random.Random(seed)
    kills = 0
    for _ in range(2):  # two kills per run, at random moments
        proc = subprocess.Popen(
            train_cmd(tiny_demo, tmp_path, "killed", *(["--resume"] if kills else [])),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(rng.uniform(4.0, 14.0))
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            kills += 1
        proc.wait()
        if not (tmp_path / "killed" / "Checkpoints" / "last.ckpt").is_file():
            kills = 0  # killed before the first checkpoint: a user starts again
    resume = ["--resume"] if (tmp_path / "killed" / "Checkpoints" / "last.ckpt").is_file() else []
    done = subprocess.run(
        train_cmd(tiny_demo, tmp_path, "killed", *resume), capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-2000:]
    got = last_weights(tmp_path, "killed")
    for k, v in want.items():
        assert torch.equal(v, got[k]), (seed, k)
