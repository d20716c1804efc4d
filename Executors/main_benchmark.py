"""Compare representations: score several runs' latents on the same samples against labels.

    python Executors/main_benchmark.py --latents runA/Output/emb.parquet B=runB \\
        --labels phenotypes.tsv covariates.tsv --label_cols ef_class ejection_fraction \\
        --batch_col site --group_col patientID --pixels data.h5 --out bench/

Writes DIR/metrics.json (run -> metric -> value, ci_low, ci_high, direction, ...),
DIR/metrics.csv and a self-contained DIR/report.html. Metrics, their directions
and how CIs are computed are documented in Engineering/Eval/; the benchmark itself
is Engineering/Engines/benchmark/. All input checks run before anything is
written; a bad input is one ``error:`` line and exit 2.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from Engineering.config.argtypes import bounded
from Engineering.Engines.benchmark import benchmark
from Engineering.errors import ArgParser, run_cli
from Engineering.Eval.samples import AGGREGATIONS


def build_parser() -> argparse.ArgumentParser:
    p = ArgParser(
        prog="main_benchmark.py", description="Benchmark latent representations (see Engineering/Eval for the metrics)."
    )
    p.add_argument(
        "--latents",
        nargs="+",
        required=True,
        metavar="[NAME=]PATH",
        help="emb.h5 / emb.tsv / emb.parquet or a run folder; optionally named NAME=PATH",
    )
    p.add_argument(
        "--labels",
        nargs="+",
        default=[],
        metavar="FILE",
        help="label tables keyed by patient (first column, or FID / f.eid / patientID)",
    )
    p.add_argument("--label_cols", nargs="+", default=None, help="label columns (default: all label columns)")
    p.add_argument("--categorical_cols", nargs="+", default=None, help="force these columns to be classes")
    p.add_argument("--continuous_cols", nargs="+", default=None, help="force these columns to be regressed")
    p.add_argument("--batch_col", default=None, help="batch column (e.g. site): enables batch-effect metrics")
    p.add_argument(
        "--group_col",
        default=None,
        help="group column (e.g. patientID): CV folds, neighbours and bootstrap respect groups",
    )
    p.add_argument(
        "--aggregate",
        choices=AGGREGATIONS,
        default="none",
        help="'patient': average latents per patient (runs of different granularity)",
    )
    p.add_argument("--keys", nargs="+", default=None, help="only latents of these input keys")
    p.add_argument("--pixels", default=None, metavar="DATA_H5", help="input data.h5 for the PCA-of-pixels baseline")
    p.add_argument(
        "--pixels_axes",
        default=None,
        metavar="CHANNEL_DIM,SLICE_DIM",
        help="json§DS_channel_dim,DS_slice_dim of the latents' runs (e.g. 0,1 for time as slices); "
        "default: read from the runs' resolved_config.yaml, else 0,2",
    )
    p.add_argument(
        "--run",
        nargs="+",
        default=None,
        metavar="[NAME=]RUN_DIR",
        help="model run folders (or checkpoints) of --latents runs, matched by name, for the "
        "model-dependent metrics: rotation/flip sensitivity and reconstruction error",
    )
    p.add_argument(
        "--run_max_samples",
        type=bounded(int, ge=1),
        default=32,
        help="samples (seeded subset of the common ones) for the model-dependent metrics",
    )
    p.add_argument(
        "--nsc_label",
        default=None,
        metavar="COL",
        help="NSC/NSCB: the label matched between treatment profiles (e.g. mechanism of action); "
        "needs --compound_col and --batch_col",
    )
    p.add_argument("--compound_col", default=None, help="NSC: the compound of each sample")
    p.add_argument("--dose_col", default=None, help="NSC: a treatment is a compound at a dose")
    p.add_argument(
        "--well_col",
        default=None,
        help="NSC: samples of one well are averaged first (default: each sample is its own well)",
    )
    p.add_argument(
        "--plate_col",
        default=None,
        help="NSC: the plate of each sample: part of a well's identity and the unit of --nsc_tvn "
        "(default: --batch_col); --batch_col is the batch NSCB keeps apart (BBBC021: the week)",
    )
    p.add_argument("--nsc_center", action="store_true", help="NSC: subtract the mean profile (not in the reference)")
    p.add_argument(
        "--nsc_controls",
        default=None,
        metavar="COMPOUND",
        help="NSC: the control compound (e.g. DMSO): never a query or a neighbour, as in the reference",
    )
    p.add_argument(
        "--nsc_tvn",
        action="store_true",
        help="NSC: whiten on the control samples, then TVN per plate (--plate_col, default --batch_col), "
        "as in the reference; needs --nsc_controls",
    )
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--n_boot", type=bounded(int, ge=0), default=1000, help="bootstrap resamples for the 95%% CIs")
    p.add_argument("--n_perm", type=bounded(int, ge=0), default=200, help="permutations for the retrieval p-value")
    p.add_argument("--n_splits", type=bounded(int, ge=2), default=5, help="cross-validation folds")
    p.add_argument(
        "--n_repeats", type=bounded(int, ge=1), default=3, help="repeats of the linear-probe cross-validation"
    )
    p.add_argument(
        "--co2_country",
        default=None,
        metavar="ISO3",
        help="--run efficiency: CO2 of the measured energy (codecarbon, offline) on this country's grid, e.g. GBR",
    )
    p.add_argument(
        "--outlier_col",
        default=None,
        metavar="COL",
        help="label column marking known outliers (1/0): the AUROC of intrinsic-dimension outlier scores",
    )
    p.add_argument(
        "--archetypes",
        type=bounded(int, ge=0),
        default=0,
        metavar="K",
        help="also fit K archetypes to each run's latents and report the variance they explain (0 = off)",
    )
    p.add_argument("--seed", type=bounded(int, ge=0, le=2**32 - 1), default=0)
    p.add_argument(
        "--blas_threads",
        type=bounded(int, ge=0),
        default=1,
        help="BLAS threads while scoring (0 = library default); 1 is fastest for the many small fits",
    )
    p.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    return p


def main(argv: Sequence[str]) -> dict:
    return benchmark(build_parser().parse_args(list(argv)))


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
