"""Do the ancestor's confounder-aware VAEs do what they promise? A planted cohort, four models, held-out probes.

The cohort is the demo generator's phantom (Engineering/data/demo.py): the cavity radius is a phenotype the image
carries (with a 3-dimensional latent, a plain VAE keeps only part of it), and the three sites are a confounder the
image also carries (per-site gain -- an intensity shift kept by the fixed normalisation used here, x / 1000 -- plus
noise and blur). On fold 0 (patients disjoint between train
and test) we train, with the same seed and budget:

- ``vae``: pythae's VAE;
- ``ultra_vae`` + ``learn_phenotypes`` (``--phenotype``, default cavity_radius);
- the same + ``anti_confounders_strategy 2`` (correlation penalty with the site, one-hot);
- the same + ``anti_confounders_strategy 1`` (adversarial site head with gradient reversal);

then embed every patient (``--run_mode 2`` on the whole file), average each patient's latents, fit a ridge probe
of the phenotype and a logistic probe of the site on the training patients, and score them on the test patients:
R² and accuracy with percentile-bootstrap 95% CIs over test patients; chance for the site is the test share of
its most frequent site. The Markdown table goes to ``--out``/confounders.md (and benchmarks/results/ when asked).
Not part of the tests (about 8 minutes on 2 CPU cores, nothing else running).

    python benchmarks/bench_confounders.py [--out bench_confounders] [--epochs 25] [--write_results]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_ben import REPO, _ci, _r2, _run  # noqa: E402  (the same runner and bootstrap as the BEN benchmark)

MODELS = {
    "vae": ["--pythae_model", "vae"],
    "ultra_vae + phenotypes": [
        "--pythae_model",
        "custom_ultra_vae",
        "--model§pythae§models§ultra_vae§learn_phenotypes",
        "true",
    ],
    "ultra_vae + phenotypes + correlation penalty": [
        "--pythae_model",
        "custom_ultra_vae",
        "--model§pythae§models§ultra_vae§learn_phenotypes",
        "true",
        "--model§pythae§models§ultra_vae§anti_confounders_strategy",
        "2",
    ],
    "ultra_vae + phenotypes + adversary": [
        "--pythae_model",
        "custom_ultra_vae",
        "--model§pythae§models§ultra_vae§learn_phenotypes",
        "true",
        "--model§pythae§models§ultra_vae§anti_confounders_strategy",
        "1",
    ],
}


def _accuracy(y, p):
    return float(np.mean(y == p))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="bench_confounders")
    p.add_argument("--epochs", type=int, default=25)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--patients", type=int, default=120)
    p.add_argument("--frames", type=int, default=4)
    p.add_argument("--size", type=int, default=32)
    p.add_argument(
        "--latent_dim",
        type=int,
        default=3,
        help="small, so that what the latent keeps is a choice: with "
        "8 the plain VAE's latents already give cavity_radius a held-out R² of 0.83",
    )
    p.add_argument("--phenotype", default="cavity_radius", help="the phenotype column learned and probed")
    p.add_argument(
        "--lambda_pheno",
        type=float,
        default=10.0,
        help="lambda_pheno_loss (the ancestor's default 1 is "
        "small beside a reconstruction term summed over 32x32 pixels)",
    )
    p.add_argument("--lambda_corr", type=float, default=1000.0, help="lambda_conf_corr_loss")
    p.add_argument("--lambda_adv", type=float, default=100.0, help="lambda_conf_adv_loss (the reversed gradient)")
    p.add_argument("--write_results", action="store_true", help="also write benchmarks/results/confounders.md")
    args = p.parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    from sklearn.linear_model import LogisticRegression, RidgeCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from Engineering.data.demo import DemoSpec, write_demo
    from Engineering.data.folds import read_fold

    cohort = out / f"cohort_{args.patients}x{args.frames}x{args.size}"
    if not (cohort / "data.h5").is_file():
        write_demo(cohort, DemoSpec(n_patients=args.patients, n_frames=args.frames, size=args.size, n_folds=3))
    phen = pd.read_csv(cohort / "phenotypes.tsv", sep="\t", dtype={"FID": str}).set_index("FID")
    site = pd.read_csv(cohort / "covariates.tsv", sep="\t", dtype={"FID": str}).set_index("FID")["site"]
    fold = read_fold(cohort / "folds.csv", 0)
    train, test = set(fold.train), set(fold.test)
    common = [
        "--json§datadir",
        str(cohort),
        "--json§save_path",
        str(out),
        "--input_shape",
        f"{args.size},{args.size}",
        "--latent_dim",
        str(args.latent_dim),
        "--batch_size",
        str(args.batch_size),
        "--num_epochs",
        str(args.epochs),
        "--lr",
        str(args.lr),
        "--norm_type",
        "zscore",
        "--zscore_mean",
        "0",
        "--zscore_std",
        "1000",
        "--seed",
        "1701",
        "--no-progress_bar",
        "--no-tbactive",
    ]
    # the tables are honoured only by the models that read them: each model gets what it reads
    # (the table paths explicitly: the demo dataNpath JSON's point at the bundled @demo cohort's tables)
    tables = {
        "learn_phenotypes": [
            "--json§DS_phenotypes§path",
            str(cohort / "phenotypes.tsv"),
            "--json§DS_phenotypes§cols",
            json.dumps([args.phenotype]),
        ],
        "anti_confounders_strategy": [
            "--json§DS_confounders§path",
            str(cohort / "covariates.tsv"),
            "--json§DS_confounders§mulcat_cols",
            '["site"]',
        ],
    }
    rows = []
    for label, flags in MODELS.items():
        name = (
            f"cf_{cohort.name}_"
            + "".join(ch if ch.isalnum() else "_" for ch in label)
            + (f"_{args.phenotype}" if "phenotypes" in label else "")
        )
        extra = list(flags)
        key = "--model§pythae§models§ultra_vae§"
        if "learn_phenotypes" in " ".join(flags):
            extra += [key + "lambda_pheno_loss", str(args.lambda_pheno)]
        if flags[-1] == "2":
            extra += [key + "lambda_conf_corr_loss", str(args.lambda_corr)]
        if flags[-1] == "1":
            extra += [key + "lambda_conf_adv_loss", str(args.lambda_adv)]
        run_common = common + [a for key, part in tables.items() if any(key in f for f in flags) for a in part]
        if not (out / name / "Output_all" / "emb.parquet").is_file():
            _run("Executors/main_recon.py", *run_common, *extra, "--fulltrainID", name, "--run_mode", "1")
            _run(
                "Executors/main_recon.py",
                *run_common,
                *extra,
                "--fulltrainID",
                name,
                "--resume",
                "--load_best",
                "--run_mode",
                "2",
                "--output_suffix",
                "all",
                "--json§foldCSV",
                "0",
            )
        emb = pd.read_parquet(out / name / "Output_all" / "emb.parquet")
        zc = [c for c in emb.columns if c.startswith("Z")]
        per = emb.groupby("patientID")[zc].mean()
        is_train, is_test = per.index.isin(list(train)), per.index.isin(list(test))
        y = phen.loc[per.index, args.phenotype].to_numpy(float)
        s = site.loc[per.index].to_numpy()
        ridge = make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-3, 3, 13))).fit(per[is_train], y[is_train])
        pred = ridge.predict(per[is_test])
        yt, ids = y[is_test], per.index[is_test].to_numpy()
        r2 = _ci(yt, ids, lambda i: _r2(yt[i], pred[i]))
        logit = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(per[is_train], s[is_train])
        st, sp = s[is_test], logit.predict(per[is_test])
        acc = _ci(st, ids, lambda i: _accuracy(st[i], sp[i]))
        chance = float(pd.Series(st).value_counts(normalize=True).max())
        rows.append({"model": label, "r2": r2, "site_acc": acc, "chance": chance, "n_test": int(is_test.sum())})
        print(json.dumps(rows[-1]), flush=True)
    table = [
        f"| model | R² {args.phenotype} (held-out) [95% CI] | site accuracy (held-out) [95% CI] | chance |",
        "|---|---|---|---|",
    ]
    table += [
        f"| {r['model']} | {r['r2'][0]:.3f} [{r['r2'][1]:.3f}, {r['r2'][2]:.3f}] | {r['site_acc'][0]:.3f} "
        f"[{r['site_acc'][1]:.3f}, {r['site_acc'][2]:.3f}] | {r['chance']:.3f} |"
        for r in rows
    ]
    text = (
        f"Planted cohort: {args.patients} demo patients ({args.size}×{args.size}, {args.frames} frames), fold 0: "
        f"test {rows[0]['n_test']} "
        f"patients; latent_dim {args.latent_dim}, {args.epochs} epochs of batches of {args.batch_size} "
        f"at lr {args.lr:g}, "
        f"lambda_pheno_loss {args.lambda_pheno:g}, "
        f"lambda_conf_corr_loss {args.lambda_corr:g}, lambda_conf_adv_loss {args.lambda_adv:g}; "
        f"`python benchmarks/bench_confounders.py`\n\n" + "\n".join(table) + "\n"
    )
    (out / "confounders.md").write_text(text)
    if args.write_results:
        (REPO / "benchmarks" / "results" / "confounders.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
