"""Merge a sharded inference (--run_mode 2 --shard i/n) into one Output folder.

python Executors/merge_shards.py RUN_FOLDER [--output_suffix SUFFIX]
Reads RUN_FOLDER/Output[_SUFFIX]_shard<i>of<n> (every i), writes RUN_FOLDER/Output[_SUFFIX].
"""

from pathlib import Path

from Engineering.errors import ArgParser, run_cli
from Engineering.io.shards import merge_shards


def main(argv) -> dict:
    p = ArgParser(description=__doc__.splitlines()[0])
    p.add_argument("run", help="the run folder")
    p.add_argument("--output_suffix", default="", help="as given to the sharded runs")
    args = p.parse_args(argv)
    run = Path(args.run).expanduser()
    result = merge_shards(run / ("Output" + (f"_{args.output_suffix}" if args.output_suffix else "")))
    print(f"merged {result['shards']} shards ({result['n_samples']} samples) into {result['out_dir']}")
    return result


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
