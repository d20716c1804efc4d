"""The signal policy of every executor (issue 34): a run stopped by SIGTERM, SIGHUP or Ctrl+C never exits 0; it
exits 128 + the signal number with one line saying what was saved and how to continue, and a rerun continues."""

from __future__ import annotations

import os
import re
import signal
import sys
from pathlib import Path

import pytest
import torch

from Engineering.errors import Terminated, graceful_stop, run_cli
from tests.conftest import REPO, run_executor, tiny_args

PROBE_ENV = {"PYTHONPATH": f"{REPO}:{REPO / 'tests' / 'plugins'}"}


@pytest.mark.parametrize("name, code", [("SIGTERM", 143), ("SIGHUP", 129), ("SIGINT", 130)])
def test_each_stop_signal_exits_with_its_code_and_one_line(name, code, capsys):
    def main(argv):
        os.kill(os.getpid(), getattr(signal, name))
        raise AssertionError("the signal did not stop the run")

    assert run_cli(main, []) == code
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: terminated by {name}; outputs are written atomically: what was complete is kept"]
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # run_cli puts back the handlers it found


def test_sigterm_inside_a_lightning_loop_waits_for_the_batch_then_stops(capsys):
    """Inside graceful_stop (a fit or test) SIGTERM is recorded, the loop ends its batch (Lightning raises its code-less
    SIGTERMException, a SystemExit that would exit 0) and run_cli still exits 143."""
    seen = []

    def main(argv):
        with graceful_stop():
            os.kill(os.getpid(), signal.SIGTERM)
            seen.append("the batch finished")
            raise SystemExit  # what Lightning raises at the batch boundary

    assert run_cli(main, []) == 143 and seen == ["the batch finished"]
    assert "terminated by SIGTERM" in capsys.readouterr().err

    def finishes(argv):
        with graceful_stop():
            os.kill(os.getpid(), signal.SIGTERM)
        raise AssertionError("graceful_stop must stop the run on the way out")

    assert run_cli(finishes, []) == 143


def test_other_system_exits_keep_their_code():
    def helps(argv):
        raise SystemExit(0)  # argparse --help

    with pytest.raises(SystemExit):
        run_cli(helps, [])


ENTRIES = [
    p
    for p in sorted(REPO.glob("Executors/*.py")) + sorted(REPO.glob("preprocess/*.py"))
    if 'if __name__ == "__main__":' in p.read_text()
]


@pytest.mark.parametrize("path", ENTRIES, ids=lambda p: f"{p.parent.name}/{p.name}")
@pytest.mark.parametrize("name, code", [("SIGTERM", 143), ("SIGHUP", 129)])
def test_every_executor_and_tool_exits_non_zero_when_stopped(path, name, code, monkeypatch, capsys):
    """Every entry point of Executors/ and preprocess/ ends in run_cli; stopped while it parses its flags (the first
    thing each does, through the one ArgParser), it exits 128 + the signal with one line."""
    import importlib
    import importlib.util

    from Engineering.errors import ArgParser

    assert re.search(r"raise SystemExit\(run_cli\(main\)\)", path.read_text()), path
    if path.parent.name == "preprocess":
        module = importlib.import_module(f"preprocess.{path.stem}")
    else:
        spec = importlib.util.spec_from_file_location(f"entry_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        monkeypatch.setitem(sys.modules, spec.name, module)  # dataclasses look their module up there
        spec.loader.exec_module(module)
    real = ArgParser.parse_args

    def stopped(self, *args, **kwargs):
        os.kill(os.getpid(), getattr(signal, name))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(ArgParser, "parse_args", stopped)
    argv = ["--task", "diffAE", "--help"] if path.name == "main.py" else ["--help"]
    assert run_cli(module.main, argv) == code
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith(f"error: terminated by {name}")


def test_a_preprocess_tool_stopped_mid_write_leaves_no_partial_file(tmp_path, monkeypatch, capsys):
    """Atomic writes remove their temporary file on the way out of a stop signal; the exit code is 143."""
    import h5py

    from preprocess import make_demo_dataset

    real = h5py.Group.create_dataset
    calls = []

    def stopping(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(h5py.Group, "create_dataset", stopping)
    out = tmp_path / "demo"
    assert run_cli(make_demo_dataset.main, ["--out", str(out)]) == 143
    assert len(calls) == 3
    leftovers = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert not [p for p in leftovers if p.suffix in (".h5", ".tmp")], leftovers
    assert "terminated by SIGTERM" in capsys.readouterr().err


def _probe(save: Path, demo: Path, *extra: str, env: dict | None = None):
    args = [
        "--plugins",
        "signal_probe",
        "--task",
        "diffae_signal",
        *tiny_args(demo, save, "--fulltrainID", "sig", "--batch_size", "2", *extra),
    ]
    return run_executor("main.py", *args, env={**PROBE_ENV, **(env or {})})


def test_sigterm_while_training_saves_the_state_and_a_rerun_resumes(tiny_demo, tmp_path):
    train = ["--run_mode", "1", "--num_epochs", "2", "--n_train_batches", "3"]
    proc = _probe(tmp_path, tiny_demo, *train, env={"SIGNAL_AT_STEP": "4"})
    assert proc.returncode == 143, proc.stderr[-2000:]
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("error: terminated by SIGTERM; the training state at epoch 1, step 5") and "--resume" in line
    last = tmp_path / "sig" / "Checkpoints" / "last.ckpt"
    state = torch.load(last, map_location="cpu", weights_only=True)
    assert state["global_step"] == 5  # the batch that was running when the signal came finished and was saved
    proc = _probe(tmp_path, tiny_demo, *train, "--resume")
    assert proc.returncode == 0, proc.stderr[-2000:]
    state = torch.load(last, map_location="cpu", weights_only=True)
    assert state["global_step"] == 6 and state["epoch"] == 1  # two epochs of three batches, none repeated


def test_sigterm_while_writing_test_outputs_keeps_the_chunks_and_a_rerun_resumes(tiny_demo, tmp_path):
    proc = _probe(tmp_path, tiny_demo, "--run_mode", "1")
    assert proc.returncode == 0, proc.stderr[-2000:]
    test = ["--run_mode", "2", "--resume", "--json§foldCSV", "0", "--eval§output_chunk", "2", "--test_emb_only"]
    proc = _probe(tmp_path, tiny_demo, *test, env={"SIGNAL_AT_TEST": "2"})
    assert proc.returncode == 143, proc.stderr[-2000:]
    assert "rerun the same command to continue the test" in proc.stderr.strip().splitlines()[-1]
    run = tmp_path / "sig"
    assert not (run / "Output").exists()
    assert len(list((run / ".Output.partial").glob("chunk_*.h5"))) == 3  # batches 0-2 finished: nothing recomputed
    proc = _probe(tmp_path, tiny_demo, *test)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "resuming an interrupted test: 6 of" in proc.stdout and (run / "Output" / "emb.h5").is_file()


def test_terminated_is_not_an_exception_that_code_catches_by_accident():
    assert not issubclass(Terminated, Exception) and issubclass(Terminated, BaseException)
