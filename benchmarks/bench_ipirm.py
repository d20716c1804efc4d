"""IP-IRM vs SimCLR out of distribution, and what the discovered partitions capture: leave-one-site-out on the demo.

The demo cohort has three imaging sites with strong technical effects (gain, noise, blur: covariates.tsv) and
known per-frame factors (phenotypes.tsv). For each held-out site, both methods train on the other two sites with
the same seed, encoder, augmentations and budget; then

- a ridge probe of each known factor (``cavity_radius``, ``wall_thickness``), fitted on the training sites'
  latents, scores R² on the held-out site, with a bootstrap 95% CI over the held-out patients;
- for IP-IRM, the adjusted Rand index between each discovered partition (hard subsets, ``Output/partitions.tsv``)
  and the training samples' site, i.e. whether the orbits it found are the acquisition effect (0 = chance,
  1 = the site exactly). The partition search is seeded; its ARI against a random partition of the same sizes
  is reported next to it as the chance reference, and the correlation ratio eta² of the subsets with other
  factors (per-patient phenotypes and the cine frame) shows what else the orbits might follow.

Seeds and budgets are fixed; the tables are printed as Markdown and written to ``--out``/ipirm.md. Not part of
the tests (about 15 minutes on 2 CPU cores).

    python benchmarks/bench_ipirm.py [--out bench_ipirm] [--epochs 6] [--maximize_iter 2] [--reuse]
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

FACTORS = ("cavity_radius", "wall_thickness")
ALIGN = ("cavity_radius", "wall_thickness", "intensity")  # per-patient factors a partition might follow


def _eta2(values: np.ndarray, groups: np.ndarray) -> float:
    """Correlation ratio: the share of the variance of ``values`` between the subsets ``groups``."""
    total = float(np.var(values))
    if total == 0:
        return 0.0
    between = sum((groups == g).mean() * (values[groups == g].mean() - values.mean()) ** 2 for g in np.unique(groups))
    return float(between / total)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="bench_ipirm")
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--maximize_iter", type=int, default=2)
    p.add_argument("--reuse", action="store_true", help="keep the runs already in --out (re-score only)")
    args = p.parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(REPO))
    from sklearn.linear_model import RidgeCV
    from sklearn.metrics import adjusted_rand_score
    from sklearn.preprocessing import StandardScaler

    from Engineering.data.demo import ensure_demo

    demo = ensure_demo()
    cov = pd.read_csv(demo / "covariates.tsv", sep="\t", dtype={"FID": str})
    phen = pd.read_csv(demo / "phenotypes.tsv", sep="\t", dtype={"FID": str}).set_index("FID")
    site_of = cov.set_index("FID")["site"]
    rng = np.random.default_rng(0)
    probes, aris = [], []
    for site in sorted(cov["site"].unique()):
        held = cov.loc[cov["site"] == site, "FID"].tolist()
        rest = rng.permutation(cov.loc[cov["site"] != site, "FID"].to_numpy()).tolist()
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
            "--no-progress_bar",
            "--no-tbactive",
            "--num_epochs",
            str(args.epochs),
            "--seed",
            "1701",
        ]
        for method in ("simclr", "ipirm"):
            name = f"{method}_{site}"
            extra = ["--method", method] + (["--maximize_iter", str(args.maximize_iter)] if method == "ipirm" else [])
            if not (args.reuse and (out / name / "Output_all" / "emb.parquet").is_file()):
                _run("Executors/main_ssl.py", *common, *extra, "--fulltrainID", name, "--run_mode", "1")
                _run(
                    "Executors/main_ssl.py",
                    *common,
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
            test = emb["patientID"].isin(held).to_numpy()
            scaler = StandardScaler().fit(emb.loc[~test, zc])
            for factor in FACTORS:
                y = emb["patientID"].map(phen[factor]).to_numpy(float)
                model = RidgeCV(alphas=np.logspace(-2, 4, 13)).fit(scaler.transform(emb.loc[~test, zc]), y[~test])
                pred = model.predict(scaler.transform(emb.loc[test, zc]))
                yt = y[test]
                value = _ci(yt, emb.loc[test, "patientID"].to_numpy(), lambda i: _r2(yt[i], pred[i]))
                probes.append(
                    {
                        "held-out site": site,
                        "model": "SimCLR" if method == "simclr" else "IP-IRM",
                        "factor": factor,
                        "r2": value[0],
                        "ci": (value[1], value[2]),
                    }
                )
                print(json.dumps(probes[-1]), flush=True)
            if method == "ipirm":
                parts = pd.read_csv(out / name / "Output_all" / "partitions.tsv", sep="\t", dtype={"patientID": str})
                for number, part in parts.groupby("partition"):
                    truth = part["patientID"].map(site_of).to_numpy()
                    found = part["subset"].to_numpy()
                    chance = adjusted_rand_score(truth, np.random.default_rng(number).permutation(found))
                    sizes = np.bincount(found).tolist()
                    # what else the orbits could be: the share of each factor's variance between the subsets
                    eta2 = {f: _eta2(part["patientID"].map(phen[f]).to_numpy(float), found) for f in ALIGN}
                    eta2["frame"] = _eta2(part["t"].fillna(0).to_numpy(float), found)
                    aris.append(
                        {
                            "held-out site": site,
                            "partition": int(number),
                            "epoch": int(part["found_at_epoch"].iloc[0]),
                            "sizes": sizes,
                            "ari_site": float(adjusted_rand_score(truth, found)),
                            "ari_chance": float(chance),
                            "eta2": eta2,
                        }
                    )
                    print(json.dumps(aris[-1]), flush=True)
    table = ["| held-out site | factor | SimCLR R² [95% CI] | IP-IRM R² [95% CI] |", "|---|---|---|---|"]
    by = {(r["held-out site"], r["factor"], r["model"]): r for r in probes}
    for site in sorted(cov["site"].unique()):
        for factor in FACTORS:
            cells = [
                f"{by[site, factor, m]['r2']:.3f} [{by[site, factor, m]['ci'][0]:.3f}, "
                f"{by[site, factor, m]['ci'][1]:.3f}]"
                for m in ("SimCLR", "IP-IRM")
            ]
            table.append(f"| {site} | {factor} | {cells[0]} | {cells[1]} |")
    names = [*ALIGN, "frame"]
    table += [
        "",
        "| held-out site | partition (epoch) | subset sizes | ARI vs site | ARI of a shuffled partition | "
        + " | ".join(f"η² {n}" for n in names)
        + " |",
        "|---|---|---|---|---|" + "---|" * len(names),
    ]
    table += [
        f"| {a['held-out site']} | {a['partition']} ({a['epoch']}) | {a['sizes']} | {a['ari_site']:.3f} | "
        f"{a['ari_chance']:.3f} | " + " | ".join(f"{a['eta2'][n]:.3f}" for n in names) + " |"
        for a in aris
    ]
    (out / "ipirm.md").write_text("\n".join(table) + "\n")
    print("\n".join(table))


if __name__ == "__main__":
    main()
