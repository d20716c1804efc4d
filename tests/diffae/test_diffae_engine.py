"""main_diffAE end to end on a tiny demo cohort: train -> test, outputs, resume, best checkpoint, run modes, errors."""

from __future__ import annotations

import h5py
import numpy as np
import pandas as pd
import pytest
import torch

from Engineering.Engines import registry
from Engineering.Engines.MainEngine import run
from Engineering.errors import UserError
from Engineering.io.checkpoints import best_from_last, read_checkpoint
from tests.conftest import run_executor, tiny_args

TASK = registry.get("diffAE")


def _run(demo, save, *extra):
    return run(tiny_args(demo, save, *extra), TASK)


def _emb_rows(out_dir):
    return pd.read_csv(out_dir / "emb.tsv", sep="\t", dtype={"patientID": str, "fieldID": str, "instanceID": str})


def test_2d_train_test_outputs(tiny_demo, tmp_path):
    res = _run(tiny_demo, tmp_path, "--fulltrainID", "r2d")
    run_dir, out = tmp_path / "r2d", tmp_path / "r2d" / "Output"
    assert res["out_dir"] == str(out)
    for name in ("emb.h5", "emb.tsv", "emb.parquet", "metrics.csv", "recon.h5", "preview.png"):
        assert (out / name).is_file(), name
    assert (run_dir / "resolved_config.yaml").is_file() and (run_dir / "run.log").is_file()
    assert (run_dir / "Checkpoints" / "last.ckpt").is_file()

    folds = pd.read_csv(tiny_demo / "folds.csv")
    test_ids = set(eval_list(folds.loc[0, "test"]))
    rows = _emb_rows(out)
    assert set(rows.patientID) == test_ids
    assert not rows.duplicated(["patientID", "fieldID", "instanceID", "key", "c", "t", "s"]).any()
    assert [c for c in rows.columns if c.startswith("Z")] == [f"Z{i}" for i in range(8)]
    with h5py.File(out / "emb.h5") as h5:
        assert h5.attrs["latent_dim"] == 8 and h5.attrs["model"] == "DiffAE"
        n_vectors = 0
        for pid in h5:
            for fid in h5[pid]:
                for iid in h5[pid][fid]:
                    arr = h5[pid][fid][iid]["primary_cine_0"][()]
                    assert arr.shape == (1, 4, 1, 8) and arr.dtype == np.float32  # 4 frames split, 1 slice
                    n_vectors += int(np.isfinite(arr).all(-1).sum())
                    row = rows[(rows.patientID == pid) & (rows.instanceID == iid) & (rows.t == 2)]
                    np.testing.assert_allclose(arr[0, 2, 0], row[[f"Z{i}" for i in range(8)]].values[0], rtol=1e-5)
    assert n_vectors == len(rows)
    metrics = pd.read_csv(out / "metrics.csv")
    assert {"SSIM", "PSNR", "NRMSE"} <= set(metrics.columns) and len(metrics) == len(rows)
    # the latents are the EMA encoder's output on the normalised input
    ckpt = read_checkpoint(best_from_last(run_dir / "Checkpoints"))
    assert "ema_net.encoder" in " ".join(ckpt["state_dict"])


def eval_list(cell):
    import ast

    return [str(v) for v in ast.literal_eval(cell)]


def test_3d_train_test_time_as_volume(tiny_demo, tmp_path):
    _run(
        tiny_demo,
        tmp_path,
        "--fulltrainID",
        "r3d",
        "--is3D",
        "--input_shape",
        "4,32,32",
        "--json§DS_slice_dim",
        "1",
        "--run_mode",
        "3",
        "--n_save_recon_subs",
        "1",
    )
    out = tmp_path / "r3d" / "Output"
    with h5py.File(out / "emb.h5") as h5:
        pid = next(iter(h5))
        grp = h5[pid][next(iter(h5[pid]))]
        arr = grp[next(iter(grp))]["primary_cine_0"][()]
        assert arr.shape == (1, 1, 1, 8) and np.isfinite(arr).all()  # one volume per instance
    with h5py.File(out / "recon.h5") as h5:
        assert len(h5) == 1  # one subject


@pytest.mark.parametrize("workers", ["0", "2"])
def test_resume_is_exact(tiny_demo, tmp_path, workers):
    # with workers: persistent loaders and their seeds must not shift the global RNG (dropout) across a resume;
    # random flips are a pure function of (seed, epoch, sample)
    common = (
        "--run_mode",
        "1",
        "--n_train_batches",
        "2",
        "--num_workers",
        workers,
        "--flip_prob",
        "0.5",
        "--data§flip_axes",
        "[0, 1]",
    )
    _run(tiny_demo, tmp_path, "--fulltrainID", "straight", "--num_epochs", "2", *common)
    _run(tiny_demo, tmp_path, "--fulltrainID", "split", "--num_epochs", "1", *common)
    _run(tiny_demo, tmp_path, "--fulltrainID", "split", "--num_epochs", "2", "--resume", *common)
    a = read_checkpoint(tmp_path / "straight" / "Checkpoints" / "last.ckpt")
    b = read_checkpoint(tmp_path / "split" / "Checkpoints" / "last.ckpt")
    assert a["global_step"] == b["global_step"] == 4
    for k, v in a["state_dict"].items():
        assert torch.equal(v, b["state_dict"][k]), k


def test_requeued_slurm_job_resumes_without_resume_flag(tiny_demo, tmp_path, monkeypatch, capsys):
    common = ("--run_mode", "1", "--n_train_batches", "2")
    _run(tiny_demo, tmp_path, "--fulltrainID", "straight", "--num_epochs", "2", *common)
    _run(tiny_demo, tmp_path, "--fulltrainID", "job", "--num_epochs", "1", *common)
    # SLURM requeues the preempted job: the same command again, with SLURM_RESTART_COUNT set
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    _run(tiny_demo, tmp_path, "--fulltrainID", "job", "--num_epochs", "2", *common)
    assert "requeued SLURM job (restart 1): resuming from last.ckpt" in capsys.readouterr().out
    a = read_checkpoint(tmp_path / "straight" / "Checkpoints" / "last.ckpt")
    b = read_checkpoint(tmp_path / "job" / "Checkpoints" / "last.ckpt")
    assert a["global_step"] == b["global_step"] == 4
    for k, v in a["state_dict"].items():
        assert torch.equal(v, b["state_dict"][k]), k


def test_load_best_picks_lowest_val_loss(tiny_demo, tmp_path):
    _run(tiny_demo, tmp_path, "--fulltrainID", "best", "--num_epochs", "3", "--run_mode", "1", "--lr", "3e-3")
    ckpt_dir = tmp_path / "best" / "Checkpoints"
    logged = pd.read_csv(tmp_path / "best" / "csv_logs" / "metrics.csv").dropna(subset=["val_loss"])
    best_epoch = int(logged.loc[logged.val_loss.idxmin(), "epoch"])
    best = best_from_last(ckpt_dir)
    assert best is not None and f"epoch={best_epoch:03d}" in best.name
    _run(
        tiny_demo,
        tmp_path,
        "--fulltrainID",
        "best",
        "--resume",
        "--load_best",
        "--run_mode",
        "2",
        "--test_emb_only",
        "--output_suffix",
        "fromBest",
    )
    with h5py.File(tmp_path / "best" / "Output_fromBest" / "emb.h5") as h5:
        assert h5.attrs["checkpoint"] == str(best)
    assert not (tmp_path / "best" / "Output_fromBest" / "recon.h5").exists()  # --test_emb_only


@pytest.mark.parametrize("mode", [0, 1, 2, 3])
def test_run_modes(tiny_demo, tmp_path, mode):
    if mode == 2:  # test only, from the weights of a training run
        _run(tiny_demo, tmp_path, "--fulltrainID", "m", "--run_mode", "1")
        _run(tiny_demo, tmp_path, "--fulltrainID", "m", "--run_mode", "2", "--resume", "--test_emb_only")
        assert (tmp_path / "m" / "Output" / "emb.h5").is_file()
        return
    # StepLR every epoch by 0.5 (the ancestor had LR decay disabled): the logged lr must halve
    decay = (
        [
            "--lr",
            "1e-4",
            "--lr_decay_type",
            "1",
            "--num_epochs",
            "2",
            "--training§LRDecay§type1§decay_every",
            "1",
            "--training§LRDecay§type1§decay_rate",
            "0.5",
        ]
        if mode == 1
        else []
    )
    _run(tiny_demo, tmp_path, "--fulltrainID", "m", "--run_mode", str(mode), "--test_emb_only", *decay)
    assert (tmp_path / "m" / "Checkpoints" / "last.ckpt").is_file()
    assert (tmp_path / "m" / "Output" / "emb.h5").is_file() == (mode == 3)
    logged = pd.read_csv(tmp_path / "m" / "csv_logs" / "metrics.csv")
    assert ("val_loss" in logged.columns) == (mode == 1)
    if decay:
        lrs = logged["lr-Adam"].dropna().tolist()
        assert lrs[:2] == pytest.approx([1e-4, 5e-5])


def test_whole_file_inference_and_other_checkpoint(tiny_demo, tmp_path):
    _run(tiny_demo, tmp_path, "--fulltrainID", "w", "--run_mode", "1")
    _run(
        tiny_demo,
        tmp_path,
        "--fulltrainID",
        "other",
        "--run_mode",
        "2",
        "--load_model_4test",
        str(tmp_path / "w"),
        "--json§foldCSV",
        "0",
        "--test_emb_only",
        "--output_suffix",
        "fullDS",
    )
    rows = _emb_rows(tmp_path / "other" / "Output_fullDS")
    assert rows.patientID.nunique() == 12


def test_test_without_weights_is_an_error(tiny_demo, tmp_path):
    with pytest.raises(UserError, match="needs trained weights"):
        _run(tiny_demo, tmp_path, "--run_mode", "2")
    proc = run_executor("main_diffAE.py", *tiny_args(tiny_demo, tmp_path, "--run_mode", "2"))
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0 and "needs trained weights" in proc.stderr


def test_checkpoint_that_does_not_fit(tiny_demo, tmp_path):
    _run(tiny_demo, tmp_path, "--fulltrainID", "small", "--run_mode", "1")
    with pytest.raises(UserError, match=r"do not fit the model .*shape mismatch"):
        _run(
            tiny_demo,
            tmp_path,
            "--fulltrainID",
            "big",
            "--run_mode",
            "2",
            "--latent_dim",
            "12",
            "--load_model_4test",
            str(tmp_path / "small"),
        )


def test_bad_input_through_the_executor(tmp_path):
    proc = run_executor("main_diffAE.py", "--json§datadir", str(tmp_path), "--json§save_path", str(tmp_path))
    assert proc.returncode == 2 and "data file not found" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_ddp_two_cpu_processes_write_each_subject_once(tiny_demo, tmp_path):
    proc = run_executor(
        "main_diffAE.py",
        *tiny_args(
            tiny_demo,
            tmp_path,
            "--fulltrainID",
            "ddp",
            "--accelerator",
            "cpu",
            "--ndevices",
            "2",
            "--training_strategy",
            "ddp",
            "--test_emb_only",
            "--json§foldCSV",
            "0",
            "--run_mode",
            "3",
        ),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = _emb_rows(tmp_path / "ddp" / "Output")
    assert not rows.duplicated(["patientID", "fieldID", "instanceID", "key", "c", "t", "s"]).any()
    with h5py.File(tiny_demo / "data.h5") as h5:
        n_expected = sum(h5[p][f][i]["primary_cine_0"].shape[1] for p in h5 for f in h5[p] for i in h5[p][f])
    assert len(rows) == n_expected and rows.patientID.nunique() == 12


def test_bf16_embedding_flag_writes_latents_close_to_fp32(tiny_demo, tmp_path):
    _run(tiny_demo, tmp_path, "--fulltrainID", "p", "--run_mode", "1")
    common = ("--fulltrainID", "p", "--run_mode", "2", "--resume", "--test_emb_only")
    _run(tiny_demo, tmp_path, *common, "--output_suffix", "fp32")
    _run(tiny_demo, tmp_path, *common, "--output_suffix", "bf16", "--embed_precision", "bf16")
    a, b = _emb_rows(tmp_path / "p" / "Output_fp32"), _emb_rows(tmp_path / "p" / "Output_bf16")
    keys = ["patientID", "fieldID", "instanceID", "key", "c", "t", "s"]
    a, b = a.sort_values(keys).reset_index(drop=True), b.sort_values(keys).reset_index(drop=True)
    assert a[keys].equals(b[keys]) and len(a) > 0
    cols = [c for c in a.columns if c.startswith("Z")]
    za, zb = torch.tensor(a[cols].to_numpy()), torch.tensor(b[cols].to_numpy())
    assert not torch.equal(za, zb)  # the bf16 copy ran
    assert float(torch.nn.functional.cosine_similarity(za, zb).min()) > 0.99
