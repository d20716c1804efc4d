"""Combine magnitude/phase dataset pairs of a data file into complex series: magnitude * exp(i * phase).

For the complex-valued models (--complex_mode complex) on data stored as two real series, e.g. a phase-contrast
acquisition converted from NIfTI files (DICOM magnitude/phase series are paired by dicom_to_h5.py itself, with a
``phase:`` entry in its --spec). In every instance group holding both, the dataset --magnitude KEY and the dataset
--phase KEY become one complex64 dataset --as KEY (default: the magnitude's key), 5D as the pair, with min_val /
max_val of the magnitude (the data contract) and the magnitude's other attributes; every other dataset and every
group attribute is copied unchanged. An instance with only one of the two is reported and copied unchanged.

Phase units (--phase-range): "radians" (stored in [-pi, pi]) or LO,HI, the stored value range mapped linearly onto
[-pi, pi] (e.g. 0,4095 for a 12-bit phase image). A phase outside its range, a negative magnitude, a complex input
or two shapes that differ are refused for that instance (the batch goes on; nothing converted: the output is not
written).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import h5py
import numpy as np

from Engineering.data.layout import iter_datasets
from Engineering.errors import ArgParser, UserError, run_cli
from Engineering.io.read_budget import check_bytes, nbytes
from preprocess.batch_report import BatchReport
from preprocess.cli import tool_main, tool_parser
from preprocess.h5_walk import copy_group_attrs
from preprocess.h5_writer import atomic_h5, check_h5, write_image

log = logging.getLogger("preprocess")
_TOL = 1e-4  # radians of float rounding accepted beyond +-pi


def phase_range(text: str) -> tuple[float, float] | None:
    """None for "radians", else (LO, HI) of "LO,HI" with LO < HI."""
    if text == "radians":
        return None
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected radians or LO,HI (e.g. 0,4095), got {text!r}") from None
    if not lo < hi:
        raise argparse.ArgumentTypeError(f"LO must be below HI, got {text!r}")
    return lo, hi


def to_radians(phase: np.ndarray, rng: tuple[float, float] | None) -> np.ndarray:
    """The phase in radians; ValueError naming the values outside the stated range."""
    phase = phase.astype(np.float64)
    lo, hi = (-np.pi, np.pi) if rng is None else rng
    tol = _TOL if rng is None else _TOL * (hi - lo) / (2 * np.pi)
    have_lo, have_hi = float(np.nanmin(phase)), float(np.nanmax(phase))
    if have_lo < lo - tol or have_hi > hi + tol:
        unit = "radians, [-pi, pi]" if rng is None else f"--phase-range {lo:g},{hi:g}"
        raise ValueError(f"phase values {have_lo:g} .. {have_hi:g} lie outside its range ({unit})")
    return phase if rng is None else (phase - lo) / (hi - lo) * 2 * np.pi - np.pi


def combine(magnitude: np.ndarray, phase: np.ndarray, rng: tuple[float, float] | None) -> np.ndarray:
    """magnitude * exp(i * phase) as complex64; ValueError for a pair that cannot be one complex series."""
    if np.iscomplexobj(magnitude) or np.iscomplexobj(phase):
        raise ValueError("the pair is already complex")
    if magnitude.shape != phase.shape:
        raise ValueError(f"magnitude shape {magnitude.shape} and phase shape {phase.shape} differ")
    if np.nanmin(magnitude) < 0:
        raise ValueError(f"the magnitude has negative values (min {float(np.nanmin(magnitude)):g})")
    return (magnitude.astype(np.float64) * np.exp(1j * to_radians(phase, rng))).astype(np.complex64)


def build_parser() -> ArgParser:
    p = tool_parser(
        "magphase_to_complex.py",
        __doc__,
        out="the data file with complex series, written atomically (may be INPUT itself)",
        compression=True,
    )
    p.add_argument("input", metavar="INPUT", help="the data.h5 file holding the magnitude/phase pairs")
    p.add_argument(
        "--magnitude", required=True, metavar="KEY", help="key of the magnitude datasets, e.g. primary_flow_0"
    )
    p.add_argument("--phase", required=True, metavar="KEY", help="key of the phase datasets, e.g. primary_flowP_0")
    p.add_argument("--as", dest="as_key", metavar="KEY", help="key of the complex datasets (default: --magnitude)")
    p.add_argument(
        "--phase-range",
        type=phase_range,
        default=None,
        metavar="radians|LO,HI",
        help="the stored phase's range, mapped onto [-pi, pi] (default: radians)",
    )
    return p


@tool_main(build_parser)
def main(args: argparse.Namespace) -> None:
    data_path = check_h5(args.input)
    if args.magnitude == args.phase:
        raise UserError(f"--magnitude and --phase name the same key {args.magnitude!r}")
    out_key = args.as_key or args.magnitude
    out = Path(args.out)
    with (
        h5py.File(data_path, "r") as src,
        atomic_h5(out) as dst,
        BatchReport(
            f"no {args.magnitude}/{args.phase} pair could be combined in {data_path}", done="combined"
        ) as report,
    ):
        groups: dict[str, dict[str, h5py.Dataset]] = {}
        for entry, ds in iter_datasets(src):
            groups.setdefault(entry.group, {})[entry.key] = ds
        for group, members in groups.items():
            made = copy_group_attrs(src, dst, group)
            mag, ph = members.get(args.magnitude), members.get(args.phase)
            pair = mag is not None and ph is not None
            if pair:
                where = f"{group}/{args.magnitude}+{args.phase}"
                try:
                    check_bytes(nbytes(mag.shape, np.float64) * 3, f"combining {data_path}:{where}")
                    array = combine(mag[()], ph[()], args.phase_range)
                    if array.ndim != 5:
                        raise ValueError(f"not 5D (shape {array.shape})")
                except ValueError as exc:
                    report.fail(where, str(exc))
                    pair = False
                else:
                    attrs = {k: v for k, v in mag.attrs.items() if k not in ("min_val", "max_val")}
                    if out_key in members and out_key not in (args.magnitude, args.phase):
                        raise UserError(f"{group}/{out_key} exists already: choose another --as")
                    write_image(made, out_key, array, attrs, args.compression)
                    report.ok(where)
            elif mag is not None or ph is not None:
                report.fail(
                    f"{group}",
                    f"has {args.magnitude if mag is not None else args.phase} without "
                    f"{args.phase if mag is not None else args.magnitude}: copied unchanged",
                )
            for key, ds in members.items():
                if pair and key in (args.magnitude, args.phase, out_key):
                    continue
                src.copy(ds, made, name=key)
    log.info("wrote %s", out)


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
