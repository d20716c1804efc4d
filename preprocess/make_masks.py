"""Make a mask per dataset into ``meta_mask.h5`` (same groups and keys as the data).

Default (``--method auto``): for time series (T > 1) the region that moves, i.e.
the temporal standard deviation of the magnitude, the usual cue for localising
the beating heart in cine MRI (cf. the temporal-harmonic heart detection of Lin,
Cowan & Young, MICCAI 2006); for static images the intensity itself. The feature
map is smoothed, thresholded with Otsu's method (Otsu 1979) or a quantile, then
cleaned per slice: opening, hole filling, largest connected component, closing
and an optional dilation. Alternatively masks come from NIfTI label files.
Masks are uint8 (labels: uint8/uint16) with exactly the shape of their dataset,
repeated over channels and frames, because the data layer reads a sample's mask
with the same (c, t, s) indices as its image; gzip keeps the repeats cheap.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import h5py
import numpy as np
from scipy import ndimage
from skimage.filters import threshold_otsu

from Engineering.config.argtypes import bounded
from Engineering.data.layout import iter_datasets
from Engineering.errors import ArgParser, UserError, run_cli
from Engineering.io.read_budget import check_bytes, nbytes
from preprocess.batch_report import BatchReport
from preprocess.cli import tool_main, tool_parser
from preprocess.h5_writer import atomic_h5, check_h5
from preprocess.nifti_sources import find_nifti, load_5d
from preprocess.progress_bar import track

log = logging.getLogger("preprocess")
METHODS = ("auto", "variance", "intensity")


def feature_map(array: np.ndarray, method: str) -> np.ndarray:
    """S x X x Y map: temporal std of the magnitude (variance) or its mean (intensity)."""
    mag = np.abs(array).astype(np.float32)
    if method == "auto":
        method = "variance" if array.shape[1] > 1 else "intensity"
    if method == "variance":
        if array.shape[1] < 2:
            raise ValueError("variance masks need a time series (T > 1); use --method intensity")
        return mag.std(axis=1).mean(axis=0)
    return mag.mean(axis=(0, 1))


def disk(radius: int) -> np.ndarray:
    """A filled disk structuring element of the given radius."""
    r = np.arange(-radius, radius + 1)
    return (r[:, None] ** 2 + r[None, :] ** 2) <= radius**2


def clean_slice(binary: np.ndarray, opening: int, closing: int, dilate: int) -> np.ndarray:
    """Opening, hole filling, largest component, closing, dilation of one 2D mask."""
    if opening:
        binary = ndimage.binary_opening(binary, structure=disk(opening))
    binary = ndimage.binary_fill_holes(binary)
    labels, n = ndimage.label(binary)
    if n > 1:
        sizes = ndimage.sum_labels(binary, labels, index=np.arange(1, n + 1))
        binary = labels == (int(np.argmax(sizes)) + 1)
    if closing:
        # Pad so that closing near the border does not erode the mask.
        binary = ndimage.binary_closing(np.pad(binary, closing), structure=disk(closing))[
            closing:-closing, closing:-closing
        ]
        binary = ndimage.binary_fill_holes(binary)
    if dilate:
        binary = ndimage.binary_dilation(binary, structure=disk(dilate))
    return binary


def auto_mask(
    array: np.ndarray,
    method: str = "auto",
    threshold: float | None = None,
    sigma: float = 1.0,
    opening: int = 1,
    closing: int = 2,
    dilate: int = 0,
) -> np.ndarray:
    """A 1 x 1 x S x X x Y uint8 mask of a C x T x S x X x Y array (see module docstring)."""
    feat = feature_map(array, method)
    if sigma:
        feat = ndimage.gaussian_filter(feat, sigma=(0, sigma, sigma))
    if not np.any(feat > feat.min()):
        return np.zeros((1, 1) + feat.shape, dtype=np.uint8)  # flat image: nothing stands out
    cut = threshold_otsu(feat) if threshold is None else float(np.quantile(feat, threshold))
    mask = np.stack([clean_slice(sl > cut, opening, closing, dilate) for sl in feat])
    return mask[None, None].astype(np.uint8)


def label_mask(path: Path, shape: tuple[int, ...]) -> np.ndarray:
    """A label NIfTI as 1 x T x S x X x Y integers, checked against the dataset's shape."""
    labels, _ = load_5d(path)
    if labels.shape[0] != 1:
        raise ValueError(f"label image has {labels.shape[0]} channels; expected 1")
    if labels.shape[2:] != tuple(shape[2:]) or labels.shape[1] not in (1, shape[1]):
        raise ValueError(f"label image shape (T,S,X,Y)={labels.shape[1:]} does not fit dataset shape {tuple(shape)}")
    if np.any(labels < 0) or np.any(labels != np.round(labels)):
        raise ValueError("label image must hold non-negative integers")
    top = int(labels.max()) if labels.size else 0
    return labels.astype(np.uint8 if top < 256 else np.uint16)


def build_parser() -> ArgParser:
    p = tool_parser(
        "make_masks.py",
        __doc__,
        out="mask file, written atomically (default: meta_mask.h5 beside INPUT)",
        out_required=False,
    )
    p.add_argument("input", metavar="INPUT", help="the data.h5 file to mask")
    p.add_argument(
        "--method",
        choices=METHODS,
        default="auto",
        help="feature to threshold: auto (variance if T > 1, else intensity), variance, intensity (default: auto)",
    )
    p.add_argument(
        "--labels",
        nargs="+",
        metavar="LABELS",
        help="use NIfTI label files instead (files, folders or a mapping CSV, named as for nifti_to_h5.py)",
    )
    p.add_argument(
        "--label-key",
        default="primary",
        help="dataset key the label files belong to when not given by a mapping CSV (default: primary)",
    )
    p.add_argument("--keys", nargs="+", metavar="KEY", help="only mask these dataset keys (default: all)")
    p.add_argument(
        "--threshold",
        type=bounded(float, gt=0, lt=1),
        help="quantile in (0, 1) of the feature map to threshold at (default: Otsu's threshold)",
    )
    p.add_argument(
        "--sigma",
        type=bounded(float, ge=0),
        default=1.0,
        help="Gaussian smoothing of the feature map in pixels, 0 for none (default: 1)",
    )
    p.add_argument(
        "--opening", type=bounded(int, ge=0), default=1, help="opening radius in pixels, removes specks (default: 1)"
    )
    p.add_argument(
        "--closing", type=bounded(int, ge=0), default=2, help="closing radius in pixels, bridges gaps (default: 2)"
    )
    p.add_argument(
        "--dilate",
        type=bounded(int, ge=0),
        default=0,
        help="final dilation radius in pixels, a safety margin (default: 0)",
    )
    return p


@tool_main(build_parser)
def main(args: argparse.Namespace) -> None:
    data_path = check_h5(args.input)
    if args.threshold is not None and not 0 < args.threshold < 1:
        raise UserError(f"--threshold must be a quantile between 0 and 1, got {args.threshold}")
    for name in ("opening", "closing", "dilate"):
        if getattr(args, name) < 0:
            raise UserError(f"--{name} must be >= 0")
    labels = {}
    if args.labels:
        labels = {it.path: it.file for it in find_nifti(args.labels, key=args.label_key)}
    out = Path(args.out) if args.out else data_path.parent / "meta_mask.h5"
    if out.resolve() == data_path.resolve():
        raise UserError(f"--out would overwrite the input data file: {out}")
    with (
        h5py.File(data_path, "r") as src,
        atomic_h5(out) as dst,
        BatchReport(f"no mask could be made for {data_path}", done="masked") as report,
    ):
        entries = [(e, ds) for e, ds in iter_datasets(src) if not args.keys or e.key in args.keys]
        for entry, ds in track(entries, "masks", total=len(entries)):
            try:
                if ds.ndim != 5:
                    raise ValueError(f"not 5D (shape {ds.shape})")
                if args.labels:
                    if entry.path not in labels:
                        report.note("datasets without a label file")
                        continue
                    mask, attrs = (
                        label_mask(labels[entry.path], ds.shape),
                        {"method": "labels", "sourceFile": labels[entry.path].name},
                    )
                else:
                    # the image, its float64 feature map with its filtered and thresholded copies, the written mask
                    check_bytes(
                        nbytes(ds.shape, ds.dtype) + 4 * nbytes(ds.shape[2:], np.float64) + nbytes(ds.shape, np.uint8),
                        f"masking {data_path}:{entry.path} (shape {ds.shape})",
                    )
                    mask = auto_mask(
                        ds[()], args.method, args.threshold, args.sigma, args.opening, args.closing, args.dilate
                    )
                    attrs = {"method": args.method, "threshold": "otsu" if args.threshold is None else args.threshold}
            except ValueError as exc:
                if args.debug:
                    raise
                report.fail(entry.path, str(exc))
                continue
            if not mask.any():
                report.note("empty masks")
            full = np.broadcast_to(mask, ds.shape)
            made = dst.require_group(entry.group).create_dataset(
                entry.key, data=full, chunks=(1, 1, 1) + ds.shape[3:], compression="gzip"
            )
            made.attrs.update(attrs)
            report.ok(entry.path)
        unused = set(labels) - {e.path for e, _ in entries}
        for path in sorted(unused):
            report.fail(str(labels[path]), f"no dataset {path} in {data_path}")
    log.info("wrote %s", out)


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
