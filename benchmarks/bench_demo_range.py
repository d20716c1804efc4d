"""Does the data range matter for the DiffAE's latents? The demo recipe trained on [0, 1] vs [-1, 1] data.

DiffAE's noise schedule assumes data in [-1, 1] (Preechakul et al., CVPR 2022): [0, 1] data has a quarter
of the signal variance and a +0.5 offset at every noise level. This script trains the demo recipe
(``main_diffAE.py`` with no model flags) once per range with the same seed, embeds the whole demo cohort
with the best checkpoint, and probes the latents for the demo's known factors with ``main_benchmark``
(ridge R² of cavity_radius, linear-probe balanced accuracy of ef_class, with bootstrap CIs).

    python benchmarks/bench_demo_range.py [--out bench_range] [--epochs N]

Prints one JSON line per range. Not part of the tests (it trains for minutes).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _run(*args: str) -> None:
    proc = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"{' '.join(args[:2])} failed:\n{proc.stderr[-3000:]}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="bench_range")
    p.add_argument("--epochs", type=int, default=None, help="override the demo's epochs (default: the demo's)")
    args = p.parse_args()
    out = Path(args.out).resolve()
    from Engineering.data.demo import ensure_demo

    demo = ensure_demo()
    for rng in ("unit", "symmetric"):
        common = [
            "--json§save_path",
            str(out),
            "--fulltrainID",
            f"range_{rng}",
            "--norm_range",
            rng,
            "--no-progress_bar",
        ]
        extra = ["--num_epochs", str(args.epochs)] if args.epochs else []
        _run("Executors/main_diffAE.py", *common, *extra, "--run_mode", "1")
        _run(
            "Executors/main_diffAE.py",
            *common,
            "--resume",
            "--load_best",
            "--run_mode",
            "2",
            "--test_emb_only",
            "--output_suffix",
            "fullDS",
            "--json§foldCSV",
            "0",
        )
        bench = out / f"bench_{rng}"
        _run(
            "Executors/main_benchmark.py",
            "--latents",
            f"{rng}={out / f'range_{rng}' / 'Output_fullDS' / 'emb.h5'}",
            "--labels",
            str(demo / "phenotypes.tsv"),
            "--label_cols",
            "cavity_radius",
            "ef_class",
            "--aggregate",
            "patient",
            "--pixels",
            str(demo / "data.h5"),
            "--out",
            str(bench),
        )
        metrics = json.loads((bench / "metrics.json").read_text())
        row = {"norm_range": rng}
        for run_name, values in metrics.items():
            for name in ("r2/cavity_radius", "probe_balanced_accuracy/ef_class"):
                m = values.get(name) if isinstance(values, dict) else None
                if m and "value" in m:
                    row[f"{run_name}:{name}"] = [round(m["value"], 3), round(m["ci_low"], 3), round(m["ci_high"], 3)]
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
