"""Progress in logs that are not a terminal: plain lines (stage, batches done of total, rate, time left)."""

from __future__ import annotations

import io
import re
from types import SimpleNamespace

from Engineering.Engines import registry
from Engineering.Engines.MainEngine import run
from Engineering.Engines.progress_lines import ProgressLines
from tests.test_api import TINY_VAE


def test_lines_are_throttled_but_first_and_last_always_show(monkeypatch):
    out = io.StringIO()
    bar = ProgressLines(every_s=3600, stream=out)
    bar._trainer = SimpleNamespace(is_global_zero=True)
    clock = iter(range(100))
    monkeypatch.setattr("Engineering.Engines.progress_lines.time.monotonic", lambda: float(next(clock)))
    for done in range(1, 11):
        bar._tick("test", done, 10)
    lines = out.getvalue().splitlines()
    assert lines[0] == "test: 1/10 batches (10%)"
    assert len(lines) == 2 and lines[1].startswith("test: 10/10 batches (100%), 1.00 batches/s")
    out.truncate(0), out.seek(0)
    bar.every_s = 0  # every batch: the time left falls as batches are done
    bar._reset("test")
    for done in range(1, 5):
        bar._tick("test", done, 10)
    left = [int(m) for m in re.findall(r"about (\d+) s left", out.getvalue())]
    assert left == sorted(left, reverse=True) and len(left) == 3
    bar.disable()
    bar._tick("test", 10, 10)
    assert "10/10" not in out.getvalue()


def test_a_run_logged_to_a_file_prints_progress_lines(tiny_demo, tmp_path, capsys):
    """pytest's captured stderr is not a terminal, as a SLURM log is not: train and test phases print lines."""
    args = [
        *TINY_VAE,
        "--progress_bar",
        "--json§datadir",
        str(tiny_demo),
        "--json§save_path",
        str(tmp_path),
        "--fulltrainID",
        "p",
        "--run_mode",
        "3",
    ]
    run(args, registry.get("recon"))
    err = capsys.readouterr().err
    assert "train epoch 0: 2/2 batches (100%)" in err
    done = re.search(r"epoch 0 done: (.*)", err)
    assert done and re.search(r"train_loss\S*=\d", done.group(1)), err[-2000:]
    assert re.search(r"^test: (\d+)/\1 batches \(100%\)", err, re.M), err[-2000:]
