"""Issue 34's mechanisms other than signals: one export target rule (an export never deletes what is not its own),
one finite check (losses, latents, weights), shard-aware run locks (the shards of one test in parallel, nothing
else beside them) and a merge that refuses shards of different tests."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys

import h5py
import numpy as np
import pandas as pd
import pytest
import torch

from Engineering.Engines import registry
from Engineering.Engines.MainEngine import run
from Engineering.Engines.WarpDrives.DiffAE.engine import DiffAEEngine
from Engineering.errors import UserError
from Engineering.io.runlock import RunLock
from tests.conftest import REPO, run_executor, tiny_args

TASK = registry.get("diffAE")


class Result:
    def __init__(self, returncode, stderr):
        self.returncode, self.stderr = returncode, stderr


def _export(capsys, *argv):
    """export_hf as users run it, in-process (a subprocess would import torch and Lightning again each time)."""
    import importlib.util

    from Engineering.errors import run_cli

    spec = importlib.util.spec_from_file_location("export_hf", REPO / "Executors" / "export_hf.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    capsys.readouterr()
    code = run_cli(module.main, [str(a) for a in argv])
    return Result(code, capsys.readouterr().err)


@pytest.fixture(scope="module")
def trained(tiny_demo, tmp_path_factory):
    save = tmp_path_factory.mktemp("nothing_lost")
    run(tiny_args(tiny_demo, save, "--fulltrainID", "t", "--run_mode", "1"), TASK)
    return save


def _tree(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


# --- one export target rule -----------------------------------------------------------------------------------
def test_export_into_the_run_folder_refuses_and_deletes_nothing(trained, capsys):
    run_dir = trained / "t"
    before = _tree(run_dir)
    for out in (run_dir, run_dir / "Checkpoints", trained):
        proc = _export(capsys, "--run", str(run_dir), "--out", str(out))
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
        assert proc.stderr.startswith(f"error: --out {out} is"), proc.stderr
    assert _tree(run_dir) == before


def test_export_targets_new_empty_or_an_earlier_export_only(trained, tmp_path, capsys):
    run_dir = trained / "t"
    other = tmp_path / "notes"
    other.mkdir()
    (other / "thesis.tex").write_text("years of work")
    proc = _export(capsys, "--run", str(run_dir), "--out", str(other))
    assert (
        proc.returncode == 2
        and "not empty and is not an earlier output of this tool (it holds thesis.tex)" in proc.stderr
    )
    assert (other / "thesis.tex").read_text() == "years of work"
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    proc = _export(capsys, "--run", str(run_dir), "--out", str(a_file))
    assert proc.returncode == 2 and "is a file" in proc.stderr and a_file.read_text() == "x"
    empty = tmp_path / "empty"
    empty.mkdir()
    for _ in range(2):  # into an empty folder, then over its own earlier export (replaced atomically)
        proc = _export(capsys, "--run", str(run_dir), "--out", str(empty))
        assert proc.returncode == 0, proc.stderr
        assert sorted(p.name for p in empty.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    (empty / "extra.txt").write_text("mine")  # an earlier export plus a user's file: no longer only ours
    proc = _export(capsys, "--run", str(run_dir), "--out", str(empty))
    assert proc.returncode == 2 and (empty / "extra.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "file.txt", "notes"]  # no staging left


def test_export_of_a_checkpoint_without_weights_or_channels_is_refused(trained, tmp_path, capsys):
    ckpt = torch.load(trained / "t" / "Checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    cases = {
        "no_weights": {**ckpt, "state_dict": {}},
        "no_channels": {k: v for k, v in ckpt.items() if k != "in_channels"},
        "list_state": {**ckpt, "state_dict": [1, 2]},
    }
    for name, bad in cases.items():
        path = tmp_path / f"{name}.ckpt"
        torch.save(bad, path)
        proc = _export(
            capsys, "--run", str(trained / "t"), "--checkpoint", str(path), "--out", str(tmp_path / f"out_{name}")
        )
        assert proc.returncode == 2 and proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1, (
            name,
            proc.stderr,
        )
        assert not (tmp_path / f"out_{name}").exists()


# --- one finite check ---------------------------------------------------------------------------------------------
def test_a_diverging_run_stops_at_the_step_with_one_line(tiny_demo, tmp_path):
    with pytest.raises(UserError, match=r"non-finite training loss \(.*\) at epoch 0, step \d+"):
        run(tiny_args(tiny_demo, tmp_path, "--fulltrainID", "div", "--run_mode", "1", "--lr", "1e30"), TASK)
    assert not (tmp_path / "div" / "Output").exists()


def test_nan_or_integer_weights_are_refused_at_load(trained, tiny_demo, tmp_path):
    ckpt = torch.load(trained / "t" / "Checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    name = next(k for k, v in ckpt["state_dict"].items() if k.startswith("ema_net.") and v.is_floating_point())
    for kind, tensor, message in (
        ("nan", torch.full_like(ckpt["state_dict"][name], float("nan")), "NaN or inf"),
        ("int", ckpt["state_dict"][name].to(torch.int64), "is int64 where the model holds"),
    ):
        bad = {**ckpt, "state_dict": {**ckpt["state_dict"], name: tensor}}
        path = tmp_path / f"{kind}.ckpt"
        torch.save(bad, path)
        with pytest.raises(UserError, match=message):
            run(
                tiny_args(
                    tiny_demo,
                    tmp_path,
                    "--fulltrainID",
                    kind,
                    "--run_mode",
                    "2",
                    "--json§foldCSV",
                    "0",
                    "--preweights_path",
                    str(path),
                ),
                TASK,
            )
        assert not (tmp_path / kind / "Output").exists()


class NaNLatents(DiffAEEngine):
    def test_step(self, batch, batch_idx):
        rec = super().test_step(batch, batch_idx)
        if batch_idx == 1:
            rec["z"][0, 0] = float("nan")
        return rec


def test_non_finite_latents_are_never_written(trained, tiny_demo, monkeypatch):
    nan_task = dataclasses.replace(TASK, name="diffae_nan_latents", engine=NaNLatents, module=__name__)
    monkeypatch.setitem(registry._TASKS, nan_task.name, nan_task)  # registered for this test only
    with pytest.raises(UserError, match=r"non-finite latents for 1 of 4 samples .*\(first: \d+/"):
        run(
            tiny_args(
                tiny_demo,
                trained,
                "--fulltrainID",
                "t",
                "--run_mode",
                "2",
                "--resume",
                "--json§foldCSV",
                "0",
                "--output_suffix",
                "nan",
                "--test_emb_only",
            ),
            nan_task,
        )
    assert not (trained / "t" / "Output_nan").exists()


# --- shards in parallel, and nothing beside them --------------------------------------------------------------------
def _shard_cmd(tiny_demo, trained, shard):
    args = tiny_args(
        tiny_demo,
        trained,
        "--fulltrainID",
        "t",
        "--resume",
        "--run_mode",
        "2",
        "--json§foldCSV",
        "0",
        "--output_suffix",
        "par",
        "--test_emb_only",
        "--shard",
        shard,
    )
    return [sys.executable, str(REPO / "Executors" / "main_diffAE.py"), *args]


def test_two_shards_run_at_once_and_merge(trained, tiny_demo):
    procs = [
        subprocess.Popen(
            _shard_cmd(tiny_demo, trained, f"{i}/2"),
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
        for i in range(2)
    ]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
    run_dir = trained / "t"
    assert (run_dir / "resolved_config_Output_par_shard0of2.yaml").is_file()
    assert (run_dir / "csv_logs_shard1of2").is_dir()
    # a merge killed mid-way left its staging folder: the next merge removes it
    (run_dir / ".Output_par.stagingdead").mkdir()
    proc = run_executor("merge_shards.py", str(run_dir), "--output_suffix", "par")
    assert proc.returncode == 0, proc.stderr
    assert not (run_dir / ".Output_par.stagingdead").exists()
    parts = [pd.read_parquet(run_dir / f"Output_par_shard{i}of2" / "emb.parquet") for i in range(2)]
    merged = pd.read_parquet(run_dir / "Output_par" / "emb.parquet")
    assert len(merged) == sum(map(len, parts)) > 0 and set(parts[0].patientID).isdisjoint(parts[1].patientID)


def test_a_shard_and_a_whole_run_refuse_each_other(trained, tiny_demo, tmp_path):
    run_dir = trained / "t"
    with RunLock(run_dir):  # a training run or an unsharded test holds the run folder
        with pytest.raises(UserError, match="is in use by a run"):
            run(_shard_cmd(tiny_demo, trained, "0/3")[2:], TASK)
    with RunLock(run_dir, (1, 3)):  # a shard runs: no training, unsharded test or merge beside it
        with pytest.raises(UserError, match=r"in use by a sharded inference \(shard1of3\)"):
            RunLock(run_dir).acquire()
        with pytest.raises(UserError, match="in use by process"):
            RunLock(run_dir, (1, 3)).acquire()  # the same shard twice
        RunLock(run_dir, (2, 3)).acquire().release()  # another shard of the same test: fine
    assert not list(run_dir.glob(".lock*"))


def test_merge_refuses_shards_of_different_tests_and_damaged_shards(tmp_path):
    from Engineering.io.shards import merge_shards

    def shard(i, latent_dim, checkpoint="a.ckpt"):
        folder = tmp_path / f"Output_shard{i}of2"
        folder.mkdir(exist_ok=True)
        with h5py.File(folder / "emb.h5", "w") as h5:
            h5.attrs.update({"model": "DiffAE", "checkpoint": checkpoint, "n_samples": 1})
            h5.create_dataset(f"p{i}/f/i/primary", data=np.zeros((1, 1, 1, latent_dim), np.float32))
        table = pd.DataFrame(
            [
                {
                    "patientID": f"p{i}",
                    "fieldID": "f",
                    "instanceID": "i",
                    "key": "primary",
                    "c": 0,
                    "t": 0,
                    "s": 0,
                    **{f"Z{k}": 0.0 for k in range(latent_dim)},
                }
            ]
        )
        table.to_parquet(folder / "emb.parquet", index=False)
        return folder

    shard(0, 8), shard(1, 4)
    with pytest.raises(UserError, match="latents of different sizes"):
        merge_shards(tmp_path / "Output")
    shard(1, 8, checkpoint="b.ckpt")
    with pytest.raises(UserError, match="not one test: checkpoint 'a.ckpt' vs 'b.ckpt'"):
        merge_shards(tmp_path / "Output")
    shard(1, 8)
    (tmp_path / "Output_shard1of2" / "emb.h5").write_bytes(b"not hdf5")
    with pytest.raises(UserError, match="shard Output_shard1of2 is damaged"):
        merge_shards(tmp_path / "Output")
    shard(1, 8)
    (tmp_path / "Output_shard1of2" / "emb.parquet").unlink()
    with pytest.raises(UserError, match="shard Output_shard1of2 is damaged or incomplete"):
        merge_shards(tmp_path / "Output")
    shard(1, 8)
    assert merge_shards(tmp_path / "Output")["n_samples"] == 2
    assert not (tmp_path / "Output").joinpath("emb.tsv").read_text().count("nan")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_export_config_marker_is_what_the_rule_reads(trained, tmp_path, capsys):
    """An earlier export is recognised by config.json's format, not by file names alone."""
    fake = tmp_path / "fake"
    fake.mkdir()
    for name in ("config.json", "model.safetensors", "README.md"):
        (fake / name).write_text(json.dumps({"format": "someone-else"}))
    proc = _export(capsys, "--run", str(trained / "t"), "--out", str(fake))
    assert proc.returncode == 2 and "is not an earlier output" in proc.stderr
    assert (fake / "model.safetensors").read_text() == json.dumps({"format": "someone-else"})
    shutil.rmtree(fake)
