"""Write the synthetic cardiac-cine demo cohort (see Engineering/data/demo.py).

python preprocess/make_demo_dataset.py [--out DIR] [--n_patients 64] [--n_frames 16] [--size 64] [--seed 1701]
    [--channels 1]   (3: the multi-channel variant that @demo_mc names)
"""

from __future__ import annotations

import argparse

from Engineering.config.argtypes import bounded
from Engineering.data.demo import DemoSpec, default_demo_dir, write_demo
from Engineering.errors import ArgParser, run_cli
from preprocess.cli import tool_main, tool_parser


def build_parser() -> ArgParser:
    p = tool_parser(
        "make_demo_dataset.py",
        __doc__,
        out="output folder (default: the demo cache)",
        out_required=False,
        out_default=str(default_demo_dir()),
    )
    p.add_argument("--n_patients", type=bounded(int, ge=1), default=DemoSpec.n_patients)
    p.add_argument("--n_frames", type=bounded(int, ge=1), default=DemoSpec.n_frames)
    p.add_argument("--size", type=bounded(int, ge=1), default=DemoSpec.size, help="in-plane size X = Y")
    p.add_argument("--seed", type=bounded(int, ge=0, le=2**32 - 1), default=DemoSpec.seed)
    p.add_argument("--n_folds", type=bounded(int, ge=1), default=DemoSpec.n_folds)
    p.add_argument(
        "--channels",
        type=int,
        default=DemoSpec.channels,
        choices=(1, 2, 3),
        help="1: the cardiac phantom; 3: add the membrane and nucleus stain channels",
    )
    return p


@tool_main(build_parser)
def main(args: argparse.Namespace) -> None:
    out = write_demo(
        args.out, DemoSpec(args.n_patients, args.n_frames, args.size, args.seed, args.n_folds, args.channels)
    )
    print(f"demo dataset written to {out}")


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
