"""Checkpoints written before the family-package redesign (issue 35) load after it and compute the same.

``tests/fixtures/premove/``: one tiny run of every task that trains from data alone, written by main at 57ae225
(``make_premove.py`` says how), and what each loaded engine then computed on a fixed input. Loading goes through
``saved_runs.load_run``, the loader of embed.py, the benchmark and export_hf: every tensor of the checkpoint must
fit the engine the registry builds today (no missing or unexpected key) and give the same latents (the GAN: the
same images from fixed codes).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from Engineering.Engines.saved_runs import load_run
from Engineering.io.checkpoints import read_checkpoint

HERE = Path(__file__).resolve().parent / "fixtures" / "premove"
_spec = importlib.util.spec_from_file_location("make_premove", HERE / "make_premove.py")
make_premove = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make_premove)


@pytest.mark.parametrize("task", sorted(make_premove.TASKS))
def test_a_checkpoint_written_before_the_redesign_loads_and_computes_the_same(task):
    expected = np.load(HERE / "expected.npz")
    run = load_run(HERE / f"{task}.ckpt")
    saved = read_checkpoint(HERE / f"{task}.ckpt")["state_dict"]
    assert set(run.engine.state_dict()) == set(saved)  # every tensor has its place, no new one appeared
    x = torch.from_numpy(expected[f"{task}_input"])
    assert torch.equal(make_premove.fixed_input(run.engine, run.cfg, run.engine.in_channels), x)
    with torch.no_grad():
        y = make_premove.output_of(task, run, x)
    np.testing.assert_allclose(y.numpy(), expected[f"{task}_output"], rtol=0, atol=1e-6)
