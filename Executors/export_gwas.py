"""GWAS-ready phenotypes from latents: one row per participant, QC, covariates, transforms, merged runs.

python Executors/export_gwas.py --latents RUN_OR_FILE [RUN_OR_FILE ...] --out DIR
    [--key KEY] [--field first|last|ID] [--instance first|last|ID] [--time mean|T] [--slice mean|S] [--channel mean|C]
    [--id_map TSV --id_map_cols IMAGE_ID,IID[,FID]] [--covariates TSV --covar_id_col COL [--covar_cols a,b]
    [--categorical sex,site]] [--outlier_z 5] [--residualise] [--no-inverse_normal]
    [--merge concat|pca|cca --n_components K]

Writes DIR/pheno.tsv and DIR/covar.tsv (FID IID ..., tab-separated, NA for missing: plink2 --pheno/--covar,
regenie --phenoFile/--covarFile) and DIR/report.json + report.md (n in/out, drops by reason, per-latent
mean/SD/skewness before and after, the settings, the inputs' sha256). See docs/tasks/gwas.md.
"""

from __future__ import annotations

import argparse

from Engineering.errors import ArgParser, run_cli
from Engineering.genetics.export import GwasSettings, export


def _list(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _non_negative(text: str) -> float:
    value = float(text)
    if not value >= 0:  # also refuses NaN
        raise argparse.ArgumentTypeError(f"{text}: give a number >= 0")
    return value


def main(argv) -> dict:
    p = ArgParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n", 2)[2],
    )
    p.add_argument(
        "--latents",
        nargs="+",
        required=True,
        help="run folders or latent files (emb.h5/emb.tsv/emb.parquet); several: views or models to merge",
    )
    p.add_argument("--out", required=True, help="output folder (new, empty, or an earlier export_gwas output)")
    p.add_argument("--key", default="", help="the data key to use when the latents hold several")
    p.add_argument("--field", default="first", help="per participant: first, last (IDs in numeric order) or a fieldID")
    p.add_argument("--instance", default="first", help="per participant: first, last or an instanceID")
    for axis in ("time", "slice", "channel"):
        p.add_argument(f"--{axis}", default="mean", help=f"the {axis} axis: mean over it, or an index")
    p.add_argument("--id_map", default="", help="TSV mapping image IDs to genetic IDs")
    p.add_argument("--id_map_cols", type=_list, default=["patientID", "IID"], help="IMAGE_ID,IID[,FID] columns")
    p.add_argument("--covariates", default="", help="TSV of covariates keyed by the genetic IID")
    p.add_argument("--covar_id_col", default="IID", help="the covariate table's ID column")
    p.add_argument("--covar_cols", type=_list, default=[], help="covariate columns (default: all but ID columns)")
    p.add_argument("--categorical", type=_list, default=[], help="covariates to one-hot (non-numeric ones always are)")
    p.add_argument(
        "--outlier_z",
        type=_non_negative,
        default=0.0,
        help="drop participants with a robust |z| above this in any latent (0 = off)",
    )
    p.add_argument("--residualise", action="store_true", help="regress every latent on the covariates first")
    p.add_argument(
        "--inverse_normal",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="rank-based inverse normal transform (Blom) of every phenotype",
    )
    p.add_argument("--merge", default="concat", choices=("concat", "pca", "cca"), help="how several runs combine")
    p.add_argument("--n_components", type=int, default=0, help="components of --merge pca/cca")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    a = vars(p.parse_args(argv))
    a.pop("debug")
    built = export(GwasSettings(**a))
    r = built["report"]
    print(
        f"{r['n_out']} of {r['n_in']} participants, {built['pheno'].shape[1] - 1} phenotypes written to {a['out']}"
        + (f" (dropped: {', '.join(f'{k} {v}' for k, v in r['drops'].items())})" if r["drops"] else "")
    )
    return built


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
