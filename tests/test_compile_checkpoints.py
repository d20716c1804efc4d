"""--compile_model and the files a run writes: torch.compile's ``_orig_mod.`` prefix (Lightning issues #17415,
#20233) never reaches a checkpoint or an export, and a compiled run's checkpoints resume, load with --load_best,
export, and load back with --load_hf, compiled or not, to the same latents."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from safetensors import safe_open

from Engineering.Engines import registry
from Engineering.Engines.MainEngine import run
from Engineering.io.checkpoints import read_checkpoint
from tests.conftest import run_executor, tiny_args

TASK = registry.get("diffAE")
COMPILE = ["--compile_model"]


def _latents(out_dir):
    table = pd.read_csv(out_dir / "emb.tsv", sep="\t", dtype={"patientID": str})
    return table.sort_values(["patientID", "instanceID", "t", "s"])[[c for c in table if c.startswith("Z")]].values


@pytest.mark.slow
def test_compiled_run_checkpoints_resume_export_and_load_hf(tiny_demo, tmp_path):
    run(tiny_args(tiny_demo, tmp_path, "--fulltrainID", "plain", "--run_mode", "1"), TASK)
    run(tiny_args(tiny_demo, tmp_path, "--fulltrainID", "c", "--run_mode", "1", *COMPILE), TASK)
    plain = read_checkpoint(tmp_path / "plain" / "Checkpoints" / "last.ckpt")["state_dict"]
    ckpts = sorted((tmp_path / "c" / "Checkpoints").glob("*.ckpt"))
    assert len(ckpts) >= 2  # last and best
    for path in ckpts:  # the compiled run's files have the uncompiled run's keys, shapes and dtypes
        state = read_checkpoint(path)["state_dict"]
        assert not [k for k in state if "_orig_mod" in k], path.name
        assert {k: (v.shape, v.dtype) for k, v in state.items()} == {k: (v.shape, v.dtype) for k, v in plain.items()}

    # resume for a second epoch, compiled; then the best checkpoint's test phase, compiled and not
    run(
        tiny_args(
            tiny_demo, tmp_path, "--fulltrainID", "c", "--run_mode", "1", "--resume", "--num_epochs", "2", *COMPILE
        ),
        TASK,
    )
    state = read_checkpoint(tmp_path / "c" / "Checkpoints" / "last.ckpt")
    assert state["epoch"] == 1 and not [k for k in state["state_dict"] if "_orig_mod" in k]
    for suffix, extra in (("compiled", COMPILE), ("eager", [])):
        run(
            tiny_args(
                tiny_demo,
                tmp_path,
                "--fulltrainID",
                "c",
                "--run_mode",
                "2",
                "--resume",
                "--load_best",
                "--test_emb_only",
                "--output_suffix",
                suffix,
                *extra,
            ),
            TASK,
        )
    compiled, eager = _latents(tmp_path / "c" / "Output_compiled"), _latents(tmp_path / "c" / "Output_eager")
    assert len(compiled) > 0
    np.testing.assert_allclose(compiled, eager, atol=1e-5)

    # export and --load_hf (compiled): the same latents as the run's own test phase
    out = tmp_path / "export"
    proc = run_executor("export_hf.py", "--run", str(tmp_path / "c"), "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    with safe_open(out / "model.safetensors", "pt") as f:
        keys = list(f.keys())
    assert keys and not [k for k in keys if "_orig_mod" in k]
    run(
        [
            "--load_hf",
            str(out),
            "--run_mode",
            "2",
            "--test_emb_only",
            "--json§datadir",
            str(tiny_demo),
            "--json§save_path",
            str(tmp_path),
            "--fulltrainID",
            "hub",
            "--no-progress_bar",
            "--no-tbactive",
            *COMPILE,
        ],
        TASK,
    )
    np.testing.assert_allclose(_latents(tmp_path / "hub" / "Output"), eager, atol=1e-5)
