"""DeepSpeed ZeRO-1/2/3 on CPU with two processes (gloo), through the executors as users run them: training
(every logged loss), the test phase (every subject once), exact --resume from checkpoint directories,
--run_mode 2 from them, export_hf, and the EMA against an independent recomputation.

Marked ``deepspeed`` (``make test-deepspeed``; CI runs it after the default suite): a few minutes in all, the
first run on a machine also JIT-builds DeepSpeed's CPU ops (cached in $TORCH_EXTENSIONS_DIR).
"""

from __future__ import annotations

import json

import h5py
import numpy as np
import pandas as pd
import pytest
import torch

from Engineering.Engines.latent_engine import ema_decay_at
from Engineering.io.checkpoints import read_checkpoint
from tests.conftest import REPO, TINY_DIFFAE, run_executor

pytestmark = pytest.mark.deepspeed

TWO_CPU = ["--accelerator", "cpu", "--ndevices", "2"]
# a 3D DiffAE: 4-slice volumes of 32x32 (the demo's time axis as slices)
# the published head and loss: the configuration DeepSpeed is for, and a logged loss without P2's timestep weights
# (an epoch of 3 steps of the P2-weighted loss is too noisy for "the loss falls")
PUBLISHED_HEAD = [
    "--model§DiffAE§enc_pool",
    "avg",
    "--model§DiffAE§latent_norm",
    "none",
    "--model§DiffAE§loss_weighting",
    "uniform",
]
DIFFAE_3D = [
    *TINY_DIFFAE,
    *PUBLISHED_HEAD,
    "--is3D",
    "--input_shape",
    "4,32,32",
    "--json§DS_slice_dim",
    "1",
    "--num_epochs",
    "2",
    "--n_train_batches",
    "3",
]


def _diffae(demo, save, *extra):
    return [*DIFFAE_3D, "--json§datadir", str(demo), "--json§save_path", str(save), *TWO_CPU, *extra]


def _losses_fall(run_dir, *terms):
    log = pd.read_csv(run_dir / "csv_logs" / "metrics.csv")
    for term in terms:
        values = log[term].dropna().to_numpy()
        assert len(values) >= 2 and np.isfinite(values).all() and values[-1] < values[0], (term, values)


def _subjects_once(out):
    table = pd.read_csv(out / "emb.tsv", sep="\t", dtype={"patientID": str})
    assert len(table) > 0 and not table.duplicated(["patientID", "fieldID", "instanceID", "key", "c", "t", "s"]).any()
    with h5py.File(out / "emb.h5") as h5:
        assert h5.attrs["n_samples"] == len(table)
    return table


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_diffae_3d_trains_and_tests_under_zero(tiny_demo, tmp_path, stage):
    name = f"z{stage}"
    proc = run_executor(
        "main_diffAE.py",
        *_diffae(
            tiny_demo,
            tmp_path,
            "--training_strategy",
            f"deepspeed_stage_{stage}",
            "--fulltrainID",
            name,
            "--test_emb_only",
        ),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    _losses_fall(tmp_path / name, "train_loss_epoch", "val_loss")
    assert (tmp_path / name / "Checkpoints" / "last.ckpt").is_dir()  # DeepSpeed's checkpoint folders
    _subjects_once(tmp_path / name / "Output")


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_pythae_vae_trains_and_tests_under_zero(tiny_demo, tmp_path, stage):
    from tests.pythae.test_recon_engine import _args

    name = f"vae{stage}"
    proc = run_executor(
        "main_recon.py",
        *_args(
            tiny_demo,
            "--json§save_path",
            str(tmp_path),
            "--pythae_model",
            "vae",
            "--num_epochs",
            "3",
            "--n_train_batches",
            "3",
            *TWO_CPU,
            "--training_strategy",
            f"deepspeed_stage_{stage}",
            "--fulltrainID",
            name,
            "--test_emb_only",
        ),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    _losses_fall(tmp_path / name, "train_loss_epoch", "train_recon_loss_epoch", "val_loss")
    _subjects_once(tmp_path / name / "Output")


def test_ipirm_under_zero_3(tiny_demo, tmp_path):
    """The SSL task with IP-IRM's callbacks (bank gathered across ranks, partition broadcast) under ZeRO-3."""
    from tests.ssl.test_ipirm import _args

    # four epochs, a new partition every second one (as the default suite's IP-IRM test): over two epochs of three
    # batches with a new partition each, the contrastive loss's direction is noise (it rose on one rank layout and
    # fell on another, before and after issue 33's reference penalty)
    proc = run_executor(
        "main_ssl.py",
        *_args(
            tiny_demo,
            tmp_path,
            "--fulltrainID",
            "ip",
            "--num_epochs",
            "4",
            "--maximize_iter",
            "2",
            *TWO_CPU,
            "--training_strategy",
            "deepspeed_stage_3",
        ),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    _losses_fall(tmp_path / "ip", "train_cont")
    state = read_checkpoint(tmp_path / "ip" / "Checkpoints" / "last.ckpt")
    assert state["ipirm"]["epochs"] == [0, 2] and (tmp_path / "ip" / "Output" / "partitions.tsv").is_file()
    _subjects_once(tmp_path / "ip" / "Output")


def test_bf16_under_zero_2_keeps_the_ema_and_the_schedule_fp32(tiny_demo, tmp_path):
    args = [
        *TINY_DIFFAE,
        *PUBLISHED_HEAD,
        "--json§datadir",
        str(tiny_demo),
        "--json§save_path",
        str(tmp_path),
        *TWO_CPU,
        "--training_strategy",
        "deepspeed_stage_2",
        "--ampmode",
        "bf16-mixed",
        "--num_epochs",
        "2",
        "--n_train_batches",
        "3",
        "--fulltrainID",
        "bf",
        "--test_emb_only",
        "--grad_clip_val",
        "1.0",
    ]
    proc = run_executor("main_diffAE.py", *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    _losses_fall(tmp_path / "bf", "train_loss_epoch")
    states = torch.load(
        tmp_path / "bf" / "Checkpoints" / "last.ckpt" / "checkpoint" / "mp_rank_00_model_states.pt", weights_only=True
    )
    assert states["ds_config"]["bf16"]["enabled"] and states["ds_config"]["gradient_clipping"] == 1.0
    assert {v.dtype for k, v in states["module"].items() if k.startswith("net.")} == {torch.bfloat16}
    assert {v.dtype for v in states["ema_state_dict"].values()} == {torch.float32}  # outside the bf16 module
    _subjects_once(tmp_path / "bf" / "Output")


def test_resume_load_best_and_export_from_deepspeed_checkpoints(tiny_demo, tmp_path):
    zero3 = ["--training_strategy", "deepspeed_stage_3"]
    proc = run_executor(
        "main_diffAE.py", *_diffae(tiny_demo, tmp_path, *zero3, "--fulltrainID", "whole", "--test_emb_only")
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = run_executor(
        "main_diffAE.py",
        *_diffae(tiny_demo, tmp_path, *zero3, "--fulltrainID", "split", "--num_epochs", "1", "--run_mode", "1"),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = run_executor(
        "main_diffAE.py", *_diffae(tiny_demo, tmp_path, *zero3, "--fulltrainID", "split", "--resume", "--run_mode", "1")
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    a = read_checkpoint(tmp_path / "whole" / "Checkpoints" / "last.ckpt")["state_dict"]
    b = read_checkpoint(tmp_path / "split" / "Checkpoints" / "last.ckpt")["state_dict"]
    assert a.keys() == b.keys() and any(k.startswith("ema_net.") for k in a)
    for key in a:  # the resumed run ends with the uninterrupted run's weights, EMA included
        assert torch.equal(a[key], b[key]), key
    # the test phase again from the best checkpoint directory: the same latents
    proc = run_executor(
        "main_diffAE.py",
        *_diffae(
            tiny_demo,
            tmp_path,
            *zero3,
            "--fulltrainID",
            "whole",
            "--resume",
            "--load_best",
            "--run_mode",
            "2",
            "--test_emb_only",
            "--output_suffix",
            "again",
        ),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    first = _subjects_once(tmp_path / "whole" / "Output")
    again = _subjects_once(tmp_path / "whole" / "Output_again")
    z = [c for c in first.columns if c.startswith("Z")]
    np.testing.assert_allclose(
        first.sort_values(["patientID", "t"])[z].to_numpy(),
        again.sort_values(["patientID", "t"])[z].to_numpy(),
        rtol=0,
        atol=1e-6,
    )
    # export_hf reads the checkpoint folder; the export loads back and gives the same latents
    out = tmp_path / "hf"
    proc = run_executor("export_hf.py", "--run", str(tmp_path / "whole"), "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((out / "config.json").read_text())["weights"] == "ema"
    proc = run_executor(
        "main_diffAE.py",
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
        "fromhub",
        "--no-progress_bar",
        "--no-tbactive",
        "--json§DS_slice_dim",
        "1",
        env={"HF_HUB_OFFLINE": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    hub = _subjects_once(tmp_path / "fromhub" / "Output")
    np.testing.assert_allclose(
        first.sort_values(["patientID", "t"])[z].to_numpy(),
        hub.sort_values(["patientID", "t"])[z].to_numpy(),
        rtol=0,
        atol=1e-5,
    )


@pytest.mark.parametrize("strategy", ["default", "deepspeed_stage_3"])
def test_ema_equals_an_independent_recomputation(tiny_demo, tmp_path, strategy):
    """The EMA after training equals the EMA recomputed from the weights after every real optimiser step (a step
    is where the weights changed: under DeepSpeed with accumulation, Lightning's hook fires on every micro-batch)
    with the same decay rule, ema_decay_at(n) for the step after n others -- under DeepSpeed as without it."""
    log = tmp_path / "weights.pt"
    devices = TWO_CPU if strategy != "default" else []
    args = [
        *DIFFAE_3D,
        "--json§datadir",
        str(tiny_demo),
        "--json§save_path",
        str(tmp_path),
        *devices,
        "--training_strategy",
        strategy,
        "--plugins",
        "ema_probe",
        "--task",
        "diffae_ema",
        "--fulltrainID",
        "ema",
        "--run_mode",
        "1",
        "--training§ema_decay",
        "0.9",
        "--num_epochs",
        "2",
        "--batch_size",
        "2",
        "--n_train_batches",
        "1.0",
        "--effective_batch_size",
        str(2 * 2 * (2 if devices else 1)),
    ]  # accumulate 2
    proc = run_executor(
        "main.py", *args, env={"PYTHONPATH": f"{REPO}:{REPO / 'tests' / 'plugins'}", "EMA_LOG": str(log)}
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = torch.load(log, weights_only=True)
    ema = {k: v.clone() for k, v in records[0].items()}
    steps = 0
    for prev, cur in zip(records, records[1:]):
        if all(torch.equal(prev[k], cur[k]) for k in cur):
            continue  # a micro-batch without an optimiser step
        decay = ema_decay_at(steps, 0.9)
        steps += 1
        for k in ema:
            ema[k] = ema[k] + (1 - decay) * (cur[k] - ema[k])
    micro = len(records) - 1
    assert steps >= 2 and micro >= 2 * steps - 2, (steps, micro)  # 2 micro-batches per step (an epoch's last may
    #                                                                 step alone without DeepSpeed)
    saved = read_checkpoint(tmp_path / "ema" / "Checkpoints" / "last.ckpt")["state_dict"]
    for k, v in ema.items():
        torch.testing.assert_close(saved[f"ema_net.{k}"], v, rtol=0, atol=1e-6)
