"""Check a CUDA machine in one command: a 3D DiffAE trained for a few steps under DDP, DeepSpeed ZeRO-2 and
ZeRO-3 (bf16, activation checkpointing), resumed once, then tested; throughput and peak GPU memory per strategy.

    python benchmarks/gpu_check.py [--gpus 2] [--shape 16,64,64] [--steps 20] [--out gpu_check]

Each strategy trains ``--steps`` batches in one epoch, resumes for a second epoch (the resume path of that
strategy's checkpoints), then writes the test latents; the script checks that every test subject was written
once. Peak memory is the largest ``memory.used`` nvidia-smi reports for any GPU while the run is going (the
whole process: CUDA context included). Not a test: CI machines have no GPU. Needs ``nvidia-smi``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]


class PeakMemory(threading.Thread):
    """Polls nvidia-smi every 200 ms; ``peak`` is the largest memory.used (MiB) of any GPU."""

    def __init__(self):
        super().__init__(daemon=True)
        self.peak, self._stop = 0, threading.Event()

    def run(self):
        while not self._stop.is_set():
            out = subprocess.run(
                ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                capture_output=True,
                text=True,
            ).stdout
            self.peak = max([self.peak, *(int(v) for v in out.split() if v.strip().isdigit())])
            time.sleep(0.2)

    def stop(self):
        self._stop.set()
        self.join()


def _run(args: list[str]) -> tuple[float, int]:
    mem = PeakMemory()
    mem.start()
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "Executors/main_diffAE.py", *args], cwd=REPO, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    mem.stop()
    if proc.returncode:
        sys.exit(f"main_diffAE {' '.join(args[-6:])} failed:\n{proc.stderr[-3000:]}")
    return seconds, mem.peak


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gpus", type=int, default=2)
    p.add_argument("--shape", default="16,64,64")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch_size", type=int, default=2)
    p.add_argument("--out", default="gpu_check")
    args = p.parse_args()
    out = Path(args.out).resolve()
    common = [
        "--is3D",
        "--input_shape",
        args.shape,
        "--batch_size",
        str(args.batch_size),
        "--n_train_batches",
        str(args.steps),
        "--n_val_batches",
        "2",
        "--accelerator",
        "gpu",
        "--ndevices",
        str(args.gpus),
        "--ampmode",
        "bf16-mixed",
        "--activation_checkpointing",
        "--json§save_path",
        str(out),
        "--no-progress_bar",
        "--no-tbactive",
        "--test_emb_only",
        "--json§DS_slice_dim",
        "1",
    ]
    rows = []
    for strategy in ("ddp", "deepspeed_stage_2", "deepspeed_stage_3"):
        run = ["--training_strategy", strategy, "--fulltrainID", strategy]
        t1, m1 = _run([*common, *run, "--num_epochs", "1", "--run_mode", "1"])
        t2, m2 = _run([*common, *run, "--num_epochs", "2", "--resume", "--run_mode", "3"])
        table = pd.read_csv(out / strategy / "Output" / "emb.tsv", sep="\t")
        once = not table.duplicated(["patientID", "fieldID", "instanceID", "key", "c", "t", "s"]).any()
        rows.append(
            {
                "strategy": strategy,
                "first epoch s": round(t1, 1),
                "steps/s (incl. start-up)": round(args.steps / t1, 3),
                "resume+test s": round(t2, 1),
                "peak GPU MiB": max(m1, m2),
                "test subjects": len(table),
                "each once": once,
            }
        )
        print(rows[-1], flush=True)
    print(pd.DataFrame(rows).to_string(index=False))


if __name__ == "__main__":
    main()
