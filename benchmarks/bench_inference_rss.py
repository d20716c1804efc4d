"""Whole-cohort inference at bounded memory: peak RSS of a test-only run over 2,000 and over 20,000 samples.

Two synthetic cohorts in our HDF5 contract (the demo phantom at 16x16, 16 frames per patient: 125 and 1,250
patients), one tiny DiffAE trained once on the small one, then ``--run_mode 2 --json§foldCSV 0 --test_emb_only``
over each cohort with those weights (``--load_model_4test``). Each test runs in its own child process; its
peak RSS is the child's ``ru_maxrss`` (one child per measuring process). The outputs are streamed to chunk files
(``--output_chunk``), so the peak should not grow with the cohort: the target is within 10 % of the small run.
Medians of ``--repeats`` runs. Not part of the tests (a few minutes on 2 CPU cores).

    python benchmarks/bench_inference_rss.py [--out bench_rss] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TINY = [
    "--latent_dim",
    "8",
    "--model§DiffAE§net_ch",
    "8",
    "--model§DiffAE§ch_mult",
    "[1,2]",
    "--model§DiffAE§enc_ch_mult",
    "[1,2]",
    "--model§DiffAE§num_res_blocks",
    "1",
    "--model§DiffAE§enc_num_res_blocks",
    "1",
    "--model§DiffAE§attn_res",
    "[8]",
    "--input_shape",
    "16,16",
    "--interp_fact",
    "1",
    "--no-progress_bar",
    "--no-tbactive",
]


def _measured(args: list[str]) -> tuple[float, float]:
    """(peak RSS in MiB, seconds) of one child running main_diffAE.py with ``args``."""
    code = (
        "import resource, subprocess, sys, json, time;"
        "t = time.perf_counter();"
        f"p = subprocess.run([sys.executable, 'Executors/main_diffAE.py'] + {args!r}, capture_output=True, "
        "text=True);"
        "dt = time.perf_counter() - t;"
        "sys.stderr.write(p.stderr[-3000:] if p.returncode else '');"
        "print(json.dumps([p.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, dt]))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    rc, kib, seconds = json.loads(out.stdout.strip().splitlines()[-1])
    if rc:
        sys.exit(f"test run failed:\n{out.stderr}")
    return kib / 1024, seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="bench_rss")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--chunk", type=int, default=256)
    args = p.parse_args()
    out = Path(args.out).resolve()
    sys.path.insert(0, str(REPO))
    from Engineering.data.demo import DemoSpec, write_demo

    cohorts = {}
    for n_patients in (125, 1250):
        t = time.perf_counter()
        cohorts[n_patients * 16] = write_demo(
            out / f"cohort{n_patients}", DemoSpec(n_patients=n_patients, n_frames=16, size=16, n_folds=3)
        )
        print(f"cohort of {n_patients * 16} samples written in {time.perf_counter() - t:.0f} s", flush=True)
    small = cohorts[2000]
    train = subprocess.run(
        [
            sys.executable,
            "Executors/main_diffAE.py",
            *TINY,
            "--json§datadir",
            str(small),
            "--json§save_path",
            str(out),
            "--fulltrainID",
            "model",
            "--run_mode",
            "1",
            "--num_epochs",
            "1",
            "--n_train_batches",
            "2",
            "--n_val_batches",
            "1",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    if train.returncode:
        sys.exit(train.stderr[-3000:])
    rows = {}
    for n, cohort in cohorts.items():
        peaks, times = [], []
        for r in range(args.repeats):
            peak, seconds = _measured(
                [
                    *TINY,
                    "--json§datadir",
                    str(cohort),
                    "--json§save_path",
                    str(out),
                    "--fulltrainID",
                    f"test{n}_{r}",
                    "--run_mode",
                    "2",
                    "--json§foldCSV",
                    "0",
                    "--test_emb_only",
                    "--batch_size",
                    "64",
                    "--output_chunk",
                    str(args.chunk),
                    "--load_model_4test",
                    str(out / "model"),
                ]
            )
            peaks.append(peak)
            times.append(seconds)
        rows[n] = {
            "samples": n,
            "peak RSS MiB (median)": round(statistics.median(peaks), 1),
            "peaks": [round(v, 1) for v in peaks],
            "seconds (median)": round(statistics.median(times), 1),
        }
        print(json.dumps(rows[n]), flush=True)
    ratio = rows[20000]["peak RSS MiB (median)"] / rows[2000]["peak RSS MiB (median)"]
    print(f"peak RSS 20,000 / 2,000 samples: {ratio:.3f} (target <= 1.10)")
    (out / "rss.json").write_text(json.dumps({"rows": list(rows.values()), "ratio": ratio}, indent=1))


if __name__ == "__main__":
    main()
