"""Crop every dataset to a fixed in-plane size around its mask, padding when smaller.

The window (one per dataset, the same for all channels, frames and slices) is
centred on the bounding box of the dataset's mask (all non-zero voxels of
``meta_mask.h5``), shifted to stay inside the image when the image is large
enough, and padded symmetrically when the image is smaller than the window.
Without a mask the window is centred on the image. min_val/max_val are
recomputed; ``crop_origin`` (x0, y0 in the original image, negative when padded)
and ``uncropped_shape`` are stored so the crop can be undone, and a NIfTI
``affine`` attribute is shifted to match. Masks are cropped the same way.
"""

from __future__ import annotations

import argparse
import logging
from contextlib import nullcontext
from pathlib import Path

import h5py
import numpy as np

from Engineering.config.argtypes import bounded
from Engineering.data.layout import iter_datasets
from Engineering.errors import ArgParser, UserError, run_cli
from Engineering.io.read_budget import check_bytes, check_read, nbytes
from preprocess.batch_report import BatchReport
from preprocess.cli import tool_main, tool_parser
from preprocess.h5_walk import copy_group_attrs
from preprocess.h5_writer import atomic_h5, check_h5, write_image
from preprocess.progress_bar import track

log = logging.getLogger("preprocess")


def window_start(size: int, dim: int, centre: float) -> int:
    """First index of a ``size`` window on an axis of length ``dim`` centred near ``centre``."""
    if dim <= size:
        return -((size - dim) // 2)  # pad both sides evenly
    start = int(round(centre - size / 2))
    return min(max(start, 0), dim - size)


def mask_centre(mask: np.ndarray) -> tuple[float, float] | None:
    """Centre (x, y) of the bounding box of the non-zero voxels, None when empty."""
    xy = np.any(mask != 0, axis=(0, 1, 2))
    if not xy.any():
        return None
    xs, ys = np.nonzero(np.any(xy, axis=1))[0], np.nonzero(np.any(xy, axis=0))[0]
    return (xs[0] + xs[-1] + 1) / 2, (ys[0] + ys[-1] + 1) / 2


def crop_xy(array: np.ndarray, x0: int, y0: int, size: tuple[int, int], pad_value: float = 0) -> np.ndarray:
    """array[..., x0:x0+sx, y0:y0+sy] with pad_value outside the image."""
    sx, sy = size
    X, Y = array.shape[-2:]
    out = np.full(array.shape[:-2] + (sx, sy), pad_value, dtype=array.dtype)
    ax, bx = max(x0, 0), min(x0 + sx, X)
    ay, by = max(y0, 0), min(y0 + sy, Y)
    if ax < bx and ay < by:
        out[..., ax - x0 : bx - x0, ay - y0 : by - y0] = array[..., ax:bx, ay:by]
    return out


def shifted_affine(affine: np.ndarray, x0: int, y0: int) -> np.ndarray:
    """Voxel-to-world affine of the cropped image (X, Y are NIfTI's i, j axes)."""
    out = np.array(affine, dtype=np.float64)
    out[:3, 3] = affine[:3, :3] @ np.array([x0, y0, 0.0]) + affine[:3, 3]
    return out


def build_parser() -> ArgParser:
    p = tool_parser(
        "crop_h5.py", __doc__, out="cropped data file, written atomically (may be INPUT itself)", compression=True
    )
    p.add_argument("input", metavar="INPUT", help="the data.h5 file to crop")
    p.add_argument(
        "--size", type=bounded(int, ge=1), nargs=2, required=True, metavar=("X", "Y"), help="in-plane output size"
    )
    p.add_argument("--mask", help="mask file (default: meta_mask.h5 beside INPUT, if it exists)")
    p.add_argument("--no-mask", action="store_true", help="ignore masks: centre every window on its image")
    p.add_argument("--mask-out", help="where the cropped masks go (default: meta_mask.h5 beside --out)")
    p.add_argument("--pad-value", type=float, default=0.0, help="value outside the image when padding (default: 0)")
    return p


@tool_main(build_parser)
def main(args: argparse.Namespace) -> None:
    data_path = check_h5(args.input)
    check_read(args.size, np.uint8, f"one {args.size[0]}x{args.size[1]} frame of --size")  # before any read
    out = Path(args.out)
    mask_path = None
    if not args.no_mask:
        mask_path = Path(args.mask) if args.mask else data_path.parent / "meta_mask.h5"
        if args.mask:
            check_h5(mask_path)
        elif not mask_path.exists():
            log.info("no %s: windows centred on the images", mask_path)
            mask_path = None
    mask_out = None
    if mask_path is not None:
        mask_out = Path(args.mask_out) if args.mask_out else out.parent / "meta_mask.h5"
        if mask_out.resolve() == mask_path.resolve() and out.resolve() != data_path.resolve():
            raise UserError(
                f"cropped masks would overwrite the input masks {mask_path}; give --mask-out or another --out folder"
            )
    size = tuple(args.size)
    # The report closes innermost: when nothing could be cropped, neither output is replaced.
    with (
        h5py.File(data_path, "r") as src,
        h5py.File(mask_path, "r") if mask_path else nullcontext() as masks,
        atomic_h5(out) as dst,
        atomic_h5(mask_out) if mask_out else nullcontext() as mdst,
        BatchReport(f"no dataset could be cropped in {data_path}", done="cropped") as report,
    ):
        entries = list(iter_datasets(src))
        for entry, ds in track(entries, "crop", total=len(entries)):
            if ds.ndim != 5:
                report.fail(entry.path, f"not 5D (shape {ds.shape})")
                continue
            has_mask = masks is not None and entry.path in masks
            out_shape = ds.shape[:3] + size
            # the image, its crop, and the mask and its crop, all held at once (checked before reading any)
            need = (
                nbytes(ds.shape, ds.dtype)
                + nbytes(out_shape, ds.dtype)
                + (
                    nbytes(masks[entry.path].shape, masks[entry.path].dtype)
                    + nbytes(out_shape, masks[entry.path].dtype)
                    if has_mask
                    else 0
                )
            )
            check_bytes(need, f"cropping {data_path}:{entry.path} (shape {ds.shape}) to {size[0]}x{size[1]}")
            mask = masks[entry.path][()] if has_mask else None
            centre = mask_centre(mask) if mask is not None else None
            if centre is None:
                report.note("datasets without a (non-empty) mask, centred on the image")
                centre = (ds.shape[3] / 2, ds.shape[4] / 2)
            x0 = window_start(size[0], ds.shape[3], centre[0])
            y0 = window_start(size[1], ds.shape[4], centre[1])
            attrs = {k: v for k, v in ds.attrs.items() if k not in ("min_val", "max_val")}
            if "affine" in attrs and np.shape(attrs["affine"]) == (4, 4):
                attrs["affine"] = shifted_affine(np.asarray(attrs["affine"]), x0, y0)
            prior = np.asarray(attrs.get("crop_origin", (0, 0)))  # crops compose
            attrs["crop_origin"] = np.array([x0, y0]) + prior
            attrs.setdefault("uncropped_shape", np.array(ds.shape[3:]))
            group = copy_group_attrs(src, dst, entry.group)
            write_image(group, entry.key, crop_xy(ds[()], x0, y0, size, args.pad_value), attrs, args.compression)
            if mask is not None and mdst is not None:
                made = mdst.require_group(entry.group).create_dataset(
                    entry.key, data=crop_xy(mask, x0, y0, size, 0), compression="gzip"
                )
                made.attrs.update(dict(masks[entry.path].attrs))
            report.ok(entry.path)
    log.info("wrote %s%s", out, f" and {mask_out}" if mask_out else "")


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
