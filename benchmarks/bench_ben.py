"""Does Batch Effects Normalization help out of distribution? Leave-one-site-out on the demo phantom.

The demo cohort has three imaging sites with strong technical effects (gain, noise, blur: covariates.tsv) and
known per-frame factors (phenotypes.tsv). For each held-out site, on the other two:

- SimCLR vs SimCLR + BEN (``--batch_groups site``, latents written with ``--bn_eval_mode batch``): a ridge
  probe of ``cavity_radius`` fitted on the training sites' latents, R² on the held-out site;
- ERM vs ERM + BEN: a ResNet classifier of ``cavity_radius`` tertiles (a label written for this benchmark),
  balanced accuracy on the held-out site;

each with a bootstrap 95% CI over the held-out site's patients (Lin & Lu, MLCB 2022, report the same
comparison on RxRx1-WILDS). Seeds and budgets are fixed; the table is printed as Markdown and written to
``--out``/ben.md. Not part of the tests (about 10 minutes on 2 CPU cores).

    python benchmarks/bench_ben.py [--out bench_ben] [--epochs 6]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _run(*args: str) -> None:
    proc = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"{' '.join(args[:2])} failed:\n{proc.stderr[-3000:]}")


def _ci(values: np.ndarray, groups: np.ndarray, stat, n_boot: int = 1000, seed: int = 0) -> tuple[float, float, float]:
    """Point estimate and percentile bootstrap CI, resampling whole patients."""
    rng = np.random.default_rng(seed)
    uniq = np.unique(groups)
    rows = {g: np.flatnonzero(groups == g) for g in uniq}
    boots = []
    for _ in range(n_boot):
        pick = np.concatenate([rows[g] for g in rng.choice(uniq, len(uniq))])
        boots.append(stat(pick))
    boots = np.asarray(boots, float)
    boots = boots[np.isfinite(boots)]
    return float(stat(np.arange(len(values)))), float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))


def _r2(y, p):
    return 1.0 - float(np.sum((y - p) ** 2) / np.sum((y - y.mean()) ** 2))


def _balanced_accuracy(y, p):
    classes = np.unique(y)
    return float(np.mean([np.mean(p[y == c] == c) for c in classes]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="bench_ben")
    p.add_argument("--epochs", type=int, default=6)
    args = p.parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    from sklearn.linear_model import RidgeCV
    from sklearn.preprocessing import StandardScaler

    from Engineering.data.demo import ensure_demo

    demo = ensure_demo()
    cov = pd.read_csv(demo / "covariates.tsv", sep="\t", dtype={"FID": str})
    phen = pd.read_csv(demo / "phenotypes.tsv", sep="\t", dtype={"FID": str})
    phen["radius_class"] = pd.qcut(phen["cavity_radius"], 3, labels=["small", "medium", "large"]).astype(str)
    labels = out / "phenotypes_ben.tsv"
    phen.to_csv(labels, sep="\t", index=False)
    rng = np.random.default_rng(0)
    rows = []
    for site in sorted(cov["site"].unique()):
        held = cov.loc[cov["site"] == site, "FID"].tolist()
        rest = [q for q in rng.permutation(cov.loc[cov["site"] != site, "FID"].to_numpy()).tolist()]
        n_val = max(2, len(rest) // 10)
        folds = out / f"folds_{site}.csv"
        pd.DataFrame({"train": [str(rest[n_val:])], "val": [str(rest[:n_val])], "test": [str(held)]}).to_csv(
            folds, index=False
        )
        common = [
            "--json§save_path",
            str(out),
            "--json§foldCSV",
            str(folds),
            "--json§DS_phenotypes§path",
            str(labels),
            "--no-progress_bar",
            "--no-tbactive",
            "--num_epochs",
            str(args.epochs),
            "--seed",
            "1701",
        ]
        for method, ben in (("ssl", False), ("ssl", True), ("erm", False), ("erm", True)):
            name = f"{method}{'_ben' if ben else ''}_{site}"
            groups = ["--batch_groups", "site", "--bn_eval_mode", "batch"] if ben else []
            task = ["--erm_label", "radius_class"] if method == "erm" else []
            _run(f"Executors/main_{method}.py", *common, *groups, *task, "--fulltrainID", name, "--run_mode", "1")
            # latents of every sample (train sites and held-out site), with the run's BN policy
            _run(
                f"Executors/main_{method}.py",
                *common,
                *groups,
                *task,
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
            test = emb["patientID"].isin(held).to_numpy()
            if method == "ssl":
                y = emb["patientID"].map(phen.set_index("FID")["cavity_radius"]).to_numpy(float)
                scaler = StandardScaler().fit(emb.loc[~test, zc])
                model = RidgeCV(alphas=np.logspace(-2, 4, 13)).fit(scaler.transform(emb.loc[~test, zc]), y[~test])
                pred = model.predict(scaler.transform(emb.loc[test, zc]))
                yt = y[test]
                value = _ci(yt, emb.loc[test, "patientID"].to_numpy(), lambda i: _r2(yt[i], pred[i]))
                metric = "R² cavity_radius"
            else:
                pred_t = pd.read_csv(out / name / "Output_all" / "predictions.tsv", sep="\t", dtype={"patientID": str})
                part = pred_t[pred_t["patientID"].isin(held)].reset_index(drop=True)
                yt, pt = part["true"].to_numpy(), part["prediction"].to_numpy()
                value = _ci(yt, part["patientID"].to_numpy(), lambda i: _balanced_accuracy(yt[i], pt[i]))
                metric = "balanced accuracy radius tertile"
            rows.append(
                {
                    "held-out site": site,
                    "model": f"{method.upper()}{' + BEN' if ben else ''}",
                    "metric": metric,
                    "value": value[0],
                    "ci": (value[1], value[2]),
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    table = ["| held-out site | model | metric | value [95% CI] |", "|---|---|---|---|"]
    table += [
        f"| {r['held-out site']} | {r['model']} | {r['metric']} | {r['value']:.3f} "
        f"[{r['ci'][0]:.3f}, {r['ci'][1]:.3f}] |"
        for r in rows
    ]
    (out / "ben.md").write_text("\n".join(table) + "\n")
    print("\n".join(table))


if __name__ == "__main__":
    main()
