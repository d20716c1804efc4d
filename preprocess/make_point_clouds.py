"""Sample point clouds from the 3D images of a contract file (the point-cloud input kind).

For each 5D dataset (C, T, S, X, Y) with S > 1 the volume of one channel and time point is sampled into an
(N, 4) cloud (x, y, z, intensity; voxel units about the volume's centre), intensity-weighted above a threshold
or uniformly inside a mask (a meta_mask.h5 with the same keys), and written under the same key path.

python preprocess/make_point_clouds.py data.h5 --out points.h5 [--n_points 2048] [--channel 0] [--time 0]
    [--threshold 0.1] [--mask meta_mask.h5] [--keys KEY ...] [--seed 0]
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import h5py
import numpy as np

from Engineering.config.argtypes import bounded
from Engineering.data.layout import iter_datasets
from Engineering.data.pointclouds import sample_point_cloud, sampling_bytes
from Engineering.errors import ArgParser, UserError, run_cli
from Engineering.io.read_budget import check_bytes
from preprocess.batch_report import BatchReport
from preprocess.cli import tool_main, tool_parser
from preprocess.h5_writer import atomic_h5, check_h5

log = logging.getLogger("preprocess")


def build_parser() -> ArgParser:
    p = tool_parser(
        "make_point_clouds.py",
        __doc__,
        out="point-cloud file, written atomically (default: points.h5 beside INPUT)",
        out_required=False,
    )
    p.add_argument("input", metavar="INPUT", help="the data.h5 file of 3D images")
    p.add_argument(
        "--n_points", type=bounded(int, ge=2), default=2048, help="points per cloud, at least 2 (default: 2048)"
    )
    p.add_argument("--channel", type=bounded(int, ge=0), default=0, help="channel to sample (default: 0)")
    p.add_argument("--time", type=bounded(int, ge=0), default=0, help="time point to sample (default: 0)")
    p.add_argument(
        "--threshold",
        type=bounded(float, ge=0, lt=1),
        default=0.1,
        help="fraction of each volume's maximum below which voxels are not drawn (default: 0.1)",
    )
    p.add_argument("--mask", help="sample uniformly inside these masks instead (same keys)")
    p.add_argument("--keys", nargs="+", metavar="KEY", help="only these dataset keys (default: all)")
    p.add_argument("--seed", type=bounded(int, ge=0, le=2**32 - 1), default=0)
    return p


@tool_main(build_parser)
def main(args: argparse.Namespace) -> None:
    data_path = check_h5(args.input)
    if not 0 <= args.threshold < 1:
        raise UserError(f"--threshold must be in [0, 1), got {args.threshold}")
    check_bytes(sampling_bytes((), args.n_points), f"--n_points {args.n_points}")  # before any volume is read
    out = Path(args.out) if args.out else data_path.parent / "points.h5"
    if out.resolve() == data_path.resolve():
        raise UserError(f"--out would overwrite the input data file: {out}")
    masks = h5py.File(check_h5(args.mask), "r") if args.mask else None
    rng = np.random.default_rng(args.seed)
    try:
        with (
            h5py.File(data_path, "r") as src,
            atomic_h5(out) as dst,
            BatchReport(f"no point cloud could be made from {data_path}", done="sampled") as report,
        ):
            for entry, ds in iter_datasets(src):
                if args.keys and entry.key not in args.keys:
                    continue
                try:
                    if ds.ndim != 5 or ds.shape[2] < 2:
                        raise ValueError(f"not a 5D dataset with a volume (S > 1), shape {ds.shape}")
                    if not (0 <= args.channel < ds.shape[0] and 0 <= args.time < ds.shape[1]):
                        raise ValueError(f"--channel {args.channel} / --time {args.time} outside shape {ds.shape}")
                    check_bytes(
                        sampling_bytes(ds.shape[2:], args.n_points),
                        f"sampling {args.n_points} points from {data_path}:{entry.path} (volume {ds.shape[2:]})",
                    )
                    mask = None
                    if masks is not None:
                        path = f"{entry.group}/{entry.key}"
                        if path not in masks:
                            raise ValueError(f"no mask {path} in {args.mask}")
                        m = masks[path]
                        mask = m[min(args.channel, m.shape[0] - 1), min(args.time, m.shape[1] - 1)]
                    cloud = sample_point_cloud(ds[args.channel, args.time], args.n_points, rng, args.threshold, mask)
                except ValueError as exc:
                    if args.debug:
                        raise
                    report.fail(entry.path, str(exc))
                    continue
                made = dst.require_group(entry.group).create_dataset(entry.key, data=cloud)
                made.attrs.update(
                    {
                        "source": str(data_path.name),
                        "channel": args.channel,
                        "time": args.time,
                        "sampling": "mask" if mask is not None else f"intensity>{args.threshold:g}max",
                    }
                )
                report.ok(entry.path)
    finally:
        if masks is not None:
            masks.close()
    log.info("wrote %s", out)


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
