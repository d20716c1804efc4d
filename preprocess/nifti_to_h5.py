"""Convert NIfTI 3D/4D images into the 5D HDF5 data contract.

A 3D volume becomes 1 x 1 x S x X x Y, a 4D series 1 x T x S x X x Y (see
``preprocess.nifti_sources``). Each dataset keeps the affine, voxel size and
min_val/max_val as attributes. A file that fails is reported and skipped.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from Engineering.errors import ArgParser, UserError, run_cli
from preprocess.batch_report import BatchReport
from preprocess.cli import tool_main, tool_parser
from preprocess.h5_writer import atomic_h5, write_image
from preprocess.nifti_sources import MAPPING_COLUMNS, find_nifti, load_5d
from preprocess.progress_bar import track

log = logging.getLogger("preprocess")

ID_RULES = f"""\
IDs: a file named <patient>_<field>_<instance>[_anything].nii[.gz] (UK Biobank style)
gives all three; any other name gives the patient (the whole name) and takes
field/instance from --field/--instance (default 0). A mapping CSV INPUT names them
explicitly, columns {", ".join(MAPPING_COLUMNS)} (path relative to the CSV; the
last three optional, defaulting to the options). --field/--instance override names.
Exit code 2 when nothing converted."""


def build_parser() -> ArgParser:
    p = tool_parser(
        "nifti_to_h5.py",
        __doc__,
        epilog=ID_RULES,
        out="output HDF5 file, written atomically",
        compression=True,
        debug="show tracebacks and stop at the first failing file",
    )
    p.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="a .nii/.nii.gz file, a folder (searched recursively) or a mapping CSV",
    )
    p.add_argument(
        "--key", default="primary", help="dataset key for every image not given one by a mapping CSV (default: primary)"
    )
    p.add_argument("--field", help="field ID (default: from the file name, else 0)")
    p.add_argument("--instance", help="instance ID (default: from the file name, else 0)")
    p.add_argument("--append", action="store_true", help="add to an existing --out file instead of replacing it")
    return p


@tool_main(build_parser)
def main(args: argparse.Namespace) -> None:
    items = find_nifti(args.inputs, args.field, args.instance, args.key)
    if not items:
        raise UserError(f"no NIfTI files found in: {' '.join(args.inputs)}")
    out = Path(args.out)
    written: dict[str, Path] = {}  # dataset path -> the file it came from
    with (
        atomic_h5(out, append=args.append) as h5,
        BatchReport(f"no input could be converted; {out} left unchanged") as report,
    ):
        for item in track(items, "NIfTI -> HDF5", total=len(items)):
            if item.path in written:
                report.fail(str(item.file), f"{item.path} already written from {written[item.path]}")
                continue
            try:
                array, attrs = load_5d(item.file)
                write_image(h5.require_group(item.group), item.key, array, attrs, args.compression)
            except ValueError as exc:
                if args.debug:
                    raise
                report.fail(str(item.file), str(exc))
                continue
            written[item.path] = item.file
            report.ok(str(item.file))
    log.info("wrote %s", out)


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
