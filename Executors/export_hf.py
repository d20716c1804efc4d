"""Export a training run as a Hugging Face model repository in our format (and optionally push it).

python Executors/export_hf.py --run RUN_FOLDER [--checkpoint best|last|PATH] --out DIR [--push ORG/NAME] [--private]

Writes DIR/config.json (rebuilds the model and its input contract),
DIR/model.safetensors (EMA weights for DiffAE) and DIR/README.md (model card).
Load it back with ``--load_hf DIR`` (or ``--load_hf ORG/NAME`` once pushed).
"""

from __future__ import annotations

import argparse

from Engineering.Engines.saved_runs import describe_saved
from Engineering.errors import ArgParser, run_cli
from Engineering.io.export import export_run, push


def main(argv) -> None:
    p = ArgParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="training run folder (with Checkpoints/ and resolved_config.yaml)")
    p.add_argument("--checkpoint", default="best", help="best (by the monitored metric), last, or a checkpoint path")
    p.add_argument("--out", required=True, help="output folder for the repository files")
    p.add_argument(
        "--push",
        default=None,
        metavar="ORG/NAME",
        help="upload to this Hugging Face repo (token from HF_TOKEN or `huggingface-cli login`)",
    )
    p.add_argument("--private", action="store_true", help="create the pushed repo as private")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    a = p.parse_args(argv)
    out = export_run(a.run, a.checkpoint, a.out, describe_saved)
    print(f"exported {a.run} to {out}")
    if a.push:
        url = push(out, a.push, a.private)
        print(f"pushed to {url}")


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
