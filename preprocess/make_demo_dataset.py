"""Write the synthetic cardiac-cine demo cohort (see Engineering/data/demo.py).

python preprocess/make_demo_dataset.py [--out DIR] [--n_patients 64] [--n_frames 16] [--size 64] [--seed 1701]
"""
from __future__ import annotations

import argparse

from Engineering.data.demo import DemoSpec, default_demo_dir, write_demo
from Engineering.errors import run_cli


def main(argv) -> None:
    p = argparse.ArgumentParser(description=__doc__, allow_abbrev=False)
    p.add_argument("--out", default=str(default_demo_dir()), help="output folder (default: the demo cache)")
    p.add_argument("--n_patients", type=int, default=DemoSpec.n_patients)
    p.add_argument("--n_frames", type=int, default=DemoSpec.n_frames)
    p.add_argument("--size", type=int, default=DemoSpec.size, help="in-plane size X = Y")
    p.add_argument("--seed", type=int, default=DemoSpec.seed)
    p.add_argument("--n_folds", type=int, default=DemoSpec.n_folds)
    p.add_argument("--debug", action="store_true")
    a = p.parse_args(argv)
    out = write_demo(a.out, DemoSpec(a.n_patients, a.n_frames, a.size, a.seed, a.n_folds))
    print(f"demo dataset written to {out}")


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
