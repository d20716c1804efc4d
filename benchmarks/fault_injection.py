"""Fault injection figures: kill -9 training at random moments and while it writes a checkpoint, resume, and count
the runs whose final weights equal an uninterrupted run's (bit for bit), with --num_workers 2.

    python benchmarks/fault_injection.py [--runs N] [--out DIR]

Prints one JSON line: random kills k/N bit-exact, kills that landed inside a checkpoint write, and how many of
those left a resumable run. Not part of the tests (minutes); `make test-slow` runs a shorter version.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from Engineering.data.demo import DemoSpec, write_demo  # noqa: E402
from Engineering.io.checkpoints import read_checkpoint  # noqa: E402
from tests.test_kill_resume import last_weights, train_cmd  # noqa: E402

EPOCHS = 6


def _kill_when(proc, ckpt_dir: Path, rng: random.Random, in_write: bool) -> bool:
    """Kill at a random moment, or (in_write) as soon as a checkpoint's temporary file is seen once a previous
    last.ckpt exists (the write that must not destroy it); True if it was inside a write."""
    deadline = time.time() + (120 if in_write else rng.uniform(4, 20))
    while time.time() < deadline and proc.poll() is None:
        if (
            in_write
            and (ckpt_dir / "last.ckpt").is_file()
            and any(p.name.endswith(".tmp") for p in os.scandir(ckpt_dir))
        ):
            os.kill(proc.pid, signal.SIGKILL)
            return True
        time.sleep(0.0005 if in_write else 0.05)
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    return False


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=6)
    p.add_argument("--out", default="bench_faults")
    args = p.parse_args()
    out = Path(args.out).resolve()
    demo = write_demo(out / "demo", DemoSpec(n_patients=12, n_frames=4, size=32, n_folds=3))
    env = {**os.environ, "IMLATENT_CACHE": str(out / "cache")}
    subprocess.run(train_cmd(demo, out, "straight", epochs=EPOCHS), check=True, capture_output=True, env=env)
    want = last_weights(out, "straight")
    exact, in_write, in_write_ok = 0, 0, 0
    for run in range(args.runs):
        rng, name = random.Random(run), f"killed{run}"
        proc = subprocess.Popen(
            train_cmd(demo, out, name, epochs=EPOCHS), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env
        )
        hit = _kill_when(proc, out / name / "Checkpoints", rng, in_write=run % 2 == 1)
        proc.wait()
        last = out / name / "Checkpoints" / "last.ckpt"
        if hit:  # the previous last.ckpt must have survived the killed write
            in_write += 1
            try:
                read_checkpoint(last)
                in_write_ok += 1
            except Exception:
                pass
        resume = ["--resume"] if last.is_file() else []
        done = subprocess.run(
            train_cmd(demo, out, name, *resume, epochs=EPOCHS), capture_output=True, text=True, env=env
        )
        got = last_weights(out, name) if done.returncode == 0 else {}
        exact += int(bool(got) and all(torch.equal(v, got[k]) for k, v in want.items()))
    print(
        json.dumps(
            {
                "runs": args.runs,
                "bit_exact_after_resume": exact,
                "kills_inside_checkpoint_writes": in_write,
                "of_which_resumable": in_write_ok,
            }
        )
    )


if __name__ == "__main__":
    main()
