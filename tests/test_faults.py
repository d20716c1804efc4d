"""Faults: a kill or a full disk while writing, two runs into one folder, damaged and moved checkpoints."""

from __future__ import annotations

import errno
import json
import os
import shutil
import socket

import h5py
import pytest
import torch

from Engineering.Engines import registry
from Engineering.Engines.MainEngine import run
from Engineering.errors import UserError, run_cli
from Engineering.io.checkpoints import AtomicCheckpointIO
from Engineering.io.runlock import LOCK_NAME, RunLock
from tests.conftest import tiny_args

TASK = registry.get("diffAE")
pytestmark = pytest.mark.usefixtures("one_thread")


def _run(demo, save, *extra):
    return run(tiny_args(demo, save, *extra), TASK)


def test_checkpoint_write_that_fails_leaves_the_previous_one(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.ones(2)}}, path)

    def dies(obj, f, *a, **k):  # the process dies halfway through writing
        f.write(b"partial") if hasattr(f, "write") else open(f, "wb").write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", dies)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"state_dict": {"w": torch.zeros(2)}}, path)
    monkeypatch.undo()
    assert torch.equal(torch.load(path, weights_only=True)["state_dict"]["w"], torch.ones(2))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]  # no orphan


def test_second_run_into_a_locked_folder_refuses_and_stale_locks_are_taken_over(tiny_demo, tmp_path, capsys):
    run_dir = tmp_path / "locked"
    holder = RunLock(run_dir).acquire()
    with pytest.raises(UserError, match=rf"run folder .*locked is in use by process {os.getpid()} on"):
        _run(tiny_demo, tmp_path, "--fulltrainID", "locked", "--run_mode", "1")
    holder.release()
    # a lock whose process is gone (a kill -9) is taken over with a warning
    (run_dir / LOCK_NAME).write_text(json.dumps({"pid": 2**22 + 12345, "host": socket.gethostname()}))
    _run(tiny_demo, tmp_path, "--fulltrainID", "locked", "--run_mode", "1")
    assert "taking over the stale lock" in capsys.readouterr().out
    assert not (run_dir / LOCK_NAME).exists()  # released at the end


def test_output_set_is_swapped_in_whole_and_stale_temp_files_go(tiny_demo, tmp_path):
    _run(tiny_demo, tmp_path, "--fulltrainID", "o", "--run_mode", "1")
    _run(tiny_demo, tmp_path, "--fulltrainID", "o", "--run_mode", "2", "--resume")
    out = tmp_path / "o" / "Output"
    assert (out / "recon.h5").is_file()
    # leftovers of a killed earlier run
    (tmp_path / "o" / ".resolved_config.yaml.abc.tmp").write_text("x")
    (tmp_path / "o" / "Checkpoints" / ".last.ckpt.abc.tmp").write_bytes(b"x" * 100)
    (tmp_path / "o" / ".Output.stagingxyz").mkdir()
    _run(tiny_demo, tmp_path, "--fulltrainID", "o", "--run_mode", "2", "--resume", "--test_emb_only")
    # the new set has no recon.h5: the previous run's does not linger beside the new emb.h5
    assert sorted(p.name for p in out.iterdir()) == ["emb.h5", "emb.parquet", "emb.tsv"]
    hidden = [p.name for p in (tmp_path / "o").rglob(".*") if p.name != ".lock"]
    assert hidden == [], hidden
    assert oct(out.stat().st_mode & 0o777) != oct(0o700)  # shared like any output folder


def test_damaged_last_checkpoint_resumes_from_the_newest_readable(tiny_demo, tmp_path, capsys):
    _run(tiny_demo, tmp_path, "--fulltrainID", "dmg", "--run_mode", "1")
    ckpt_dir = tmp_path / "dmg" / "Checkpoints"
    (ckpt_dir / "last.ckpt").write_bytes((ckpt_dir / "last.ckpt").read_bytes()[:1000])  # truncated
    _run(tiny_demo, tmp_path, "--fulltrainID", "dmg", "--run_mode", "1", "--resume", "--num_epochs", "2")
    out = capsys.readouterr().out
    assert "resuming from best-" in out and "newest readable checkpoint" in out
    assert torch.load(ckpt_dir / "last.ckpt", weights_only=True)["epoch"] == 1


def test_load_best_of_a_copied_run_folder_uses_its_own_checkpoint(tiny_demo, tmp_path):
    _run(tiny_demo, tmp_path, "--fulltrainID", "orig", "--run_mode", "1")
    shutil.copytree(tmp_path / "orig", tmp_path / "copy")
    _run(tiny_demo, tmp_path, "--fulltrainID", "copy", "--run_mode", "2", "--resume", "--load_best", "--test_emb_only")
    with h5py.File(tmp_path / "copy" / "Output" / "emb.h5") as h5:
        used = h5.attrs["checkpoint"]
    assert used.startswith(str(tmp_path / "copy" / "Checkpoints")), used


def test_disk_full_is_one_line_and_exit_2(capsys):
    def main(argv):
        raise OSError(errno.ENOSPC, "No space left on device", "/data/run/Output/emb.h5")

    assert run_cli(main, []) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no space left" in err[0] and "emb.h5" in err[0]


def test_full_disk_is_noticed_before_a_checkpoint_is_written(tmp_path, monkeypatch):
    import shutil as sh

    from Engineering.io import atomic

    usage = sh.disk_usage(tmp_path)
    monkeypatch.setattr(atomic.shutil, "disk_usage", lambda p: usage._replace(free=20 * 1024))  # 20 KB free
    with pytest.raises(UserError, match="not enough free space for checkpoint last.ckpt"):
        AtomicCheckpointIO().save_checkpoint({"state_dict": {"w": torch.zeros(1000, 1000)}}, tmp_path / "last.ckpt")
    assert list(tmp_path.iterdir()) == []  # no partial file


def test_only_the_global_rank_zero_process_owns_the_run_folder(monkeypatch, tmp_path):
    from Engineering.Engines.trainer_factory import is_rank_zero

    for var in ("LOCAL_RANK", "NODE_RANK", "RANK", "SLURM_PROCID", "OMPI_COMM_WORLD_RANK", "PMI_RANK"):
        monkeypatch.delenv(var, raising=False)
    assert is_rank_zero()
    monkeypatch.setenv("SLURM_PROCID", "3")  # an srun task of a multi-GPU job: must not take the lock
    assert not is_rank_zero()
    monkeypatch.setenv("SLURM_PROCID", "0")
    # a requeued SLURM job (same job id, another node) takes its own earlier lock over
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": 1, "host": "node-17", "slurm_job": "4242"}))
    RunLock(tmp_path).acquire().release()
    (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": 1, "host": "node-17", "slurm_job": "99"}))
    with pytest.raises(UserError, match="in use by process 1 on node-17.*delete the lock file"):
        RunLock(tmp_path).acquire()
