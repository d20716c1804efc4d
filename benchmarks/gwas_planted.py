"""A planted locus, recovered through the images: genotypes -> phantom images -> a VAE's latents -> export_gwas ->
plink2 --glm. The end-to-end check that our latents carry a genetic signal through the GWAS glue (issue 38).

1. Genotypes of N participants at M SNPs (Hardy-Weinberg, MAF 0.05-0.5), written as PLINK .bed/.bim/.fam.
2. One image per participant from the demo phantom: the cavity radius is shifted by the causal SNP's allele
   dosage (``--effect`` pixels per allele) plus noise; the other factors vary at random. The acquisition site
   (gain, noise, blur) is a confounder: its distribution depends on a second SNP (stratification), so that SNP is
   associated with the images through the site only, and site enters the GWAS as a covariate.
3. main_recon trains a VAE on every image and writes its latents; export_gwas writes phenotypes (inverse normal)
   and the site covariate; plink2 --glm tests every SNP against every latent.
4. Pass: the causal SNP is the top hit of at least one latent below the Bonferroni threshold 0.05 / (M x L); the
   genomic inflation of that latent over the null SNPs is within [0.9, 1.15]; with ``--effect 0`` no SNP passes.

    python benchmarks/gwas_planted.py [--n 1000] [--m 3000] [--effect 0.8] [--out gwas_planted]
        [--null] [--write benchmarks/results/gwas.md] [--plot benchmarks/results/gwas_manhattan.png]

Needs plink2 on PATH (Debian: apt-get install plink2; ``make test-gwas`` installs it).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
from scipy import stats

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from Engineering.data.demo import SITES, render_phantom  # noqa: E402

CAUSAL, STRAT = 0, 1  # indices of the causal and the stratification SNP
SIZE = 32
MEDIAN_CHI2_1DF = stats.chi2.ppf(0.5, 1)  # 0.4549: the null median of a 1-df chi-square


def write_genotypes(prefix: Path, n: int, m: int, seed: int) -> np.ndarray:
    """PLINK 1 binary fileset; returns the (n, m) dosages of the second allele (A2)."""
    rng = np.random.default_rng(seed)
    maf = rng.uniform(0.05, 0.5, m)
    maf[[CAUSAL, STRAT]] = 0.4
    dosage = rng.binomial(2, maf, size=(n, m)).astype(np.int8)
    code = np.array([0b00, 0b10, 0b11], np.uint8)[dosage]  # hom A1, het, hom A2 (0b01 = missing)
    pad = (-n) % 4
    code = np.concatenate([code, np.zeros((pad, m), np.uint8)]).T.reshape(m, -1, 4)  # SNP-major, 4 per byte
    packed = code[..., 0] | code[..., 1] << 2 | code[..., 2] << 4 | code[..., 3] << 6
    with open(f"{prefix}.bed", "wb") as fh:
        fh.write(bytes([0x6C, 0x1B, 0x01]) + packed.astype(np.uint8).tobytes())
    ids = [f"S{i:05d}" for i in range(n)]
    pd.DataFrame({"FID": ids, "IID": ids, "pat": 0, "mat": 0, "sex": 0, "pheno": -9}).to_csv(
        f"{prefix}.fam", sep="\t", header=False, index=False
    )
    pd.DataFrame(
        {"chr": 1, "id": [f"rs{j}" for j in range(m)], "cm": 0, "pos": 1000 * (np.arange(m) + 1), "a1": "A", "a2": "G"}
    ).to_csv(f"{prefix}.bim", sep="\t", header=False, index=False)
    return dosage


def write_cohort(folder: Path, dosage: np.ndarray, effect: float, seed: int) -> Path:
    """data.h5 (one 1 x 1 x 1 x SIZE x SIZE image per participant), covariates.tsv (site) and dataNpath.json."""
    rng = np.random.default_rng(seed + 1)
    n = len(dosage)
    folder.mkdir(parents=True, exist_ok=True)
    d_causal = dosage[:, CAUSAL] - dosage[:, CAUSAL].mean()
    # site depends on the stratification SNP: 0 copies mostly site A, 2 copies mostly site C
    p_site = np.array([[0.6, 0.3, 0.1], [0.3, 0.4, 0.3], [0.1, 0.3, 0.6]])[dosage[:, STRAT]]
    site = np.array([rng.choice(3, p=p) for p in p_site])
    with h5py.File(folder / "data.h5", "w") as h5:
        for i in range(n):
            factors = {
                "cavity_radius": float(np.clip(8.0 + effect * d_causal[i] + rng.normal(0, 0.8), 5, 11)),
                "wall_thickness": rng.uniform(2.0, 3.5),
                "ejection_fraction": 0.5,
                "phase": 0.0,
                "centre_dx": rng.uniform(-2, 2),
                "centre_dy": rng.uniform(-2, 2),
                "intensity": rng.uniform(0.8, 1.1),
            }
            img = render_phantom(factors, SITES[site[i]], rng, size=SIZE)  # (C, T, X, Y)
            h5.create_dataset(f"S{i:05d}/20208/2/primary_img", data=img[:, :, None])
    pd.DataFrame({"IID": [f"S{i:05d}" for i in range(n)], "site": [SITES[s][0] for s in site]}).to_csv(
        folder / "covariates.tsv", sep="\t", index=False
    )
    (folder / "dataNpath.json").write_text(
        json.dumps(
            {
                "run_prefix": "gwas",
                "datadir": str(folder.resolve()),
                "datafile": "data.h5",
                "foldCSV": "",
                "save_path": str((folder / "runs").resolve()),
                "DS_selected_primaries": ["primary_img"],
                "DS_multi_channel": True,
                "DS_channel_dim": 0,
                "DS_slice_dim": 2,
            },
            indent=1,
        )
    )
    return folder


def train_and_embed(cohort: Path, latent_dim: int, epochs: int, seed: int) -> Path:
    """A VAE on every image (main_recon, as a user runs it); its latents of every participant."""
    cmd = [
        sys.executable,
        str(REPO / "Executors" / "main_recon.py"),
        "--datajson_path",
        str(cohort / "dataNpath.json"),
        "--fulltrainID",
        "vae",
        "--latent_dim",
        str(latent_dim),
        "--num_epochs",
        str(epochs),
        "--input_shape",
        f"{SIZE},{SIZE}",
        "--batch_size",
        "32",
        "--seed",
        str(seed),
        "--run_mode",
        "3",
        "--test_emb_only",
        "--no-progress_bar",
        "--no-tbactive",
        "--norm_type",
        "minmax",
        "--interp_fact",
        "1",
    ]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"main_recon failed ({proc.returncode}): {proc.stderr[-3000:]}")
    return cohort / "runs" / "vae"


def run_gwas(run_dir: Path, cohort: Path, geno: Path, out: Path) -> pd.DataFrame:
    """export_gwas (site as covariate, inverse normal) then plink2 --glm; one row per latent x SNP."""
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "Executors" / "export_gwas.py"),
            "--latents",
            str(run_dir),
            "--out",
            str(out / "pheno"),
            "--covariates",
            str(cohort / "covariates.tsv"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    if proc.returncode:
        raise SystemExit(f"export_gwas failed: {proc.stderr[-2000:]}")
    plink = shutil.which("plink2")
    if plink is None:
        raise SystemExit("plink2 is not on PATH (Debian: apt-get install plink2; make test-gwas installs it)")
    proc = subprocess.run(
        [
            plink,
            "--bfile",
            str(geno),
            "--pheno",
            str(out / "pheno" / "pheno.tsv"),
            "--covar",
            str(out / "pheno" / "covar.tsv"),
            "--covar-variance-standardize",
            "--glm",
            "hide-covar",
            "--threads",
            "2",
            "--out",
            str(out / "glm"),
        ],
        capture_output=True,
        text=True,
    )
    if proc.returncode:
        raise SystemExit(f"plink2 failed: {proc.stdout[-2000:]}")
    tables = []
    for f in sorted(out.glob("glm.*.glm.linear")):
        t = pd.read_csv(f, sep="\t")
        tables.append(
            pd.DataFrame(
                {
                    "latent": f.name.split(".")[1],
                    "snp": t["ID"].str[2:].astype(int),
                    "p": pd.to_numeric(t["P"], errors="coerce"),
                }
            )
        )
    return pd.concat(tables, ignore_index=True)


def evaluate(res: pd.DataFrame, m: int) -> dict:
    n_latents = res["latent"].nunique()
    threshold = 0.05 / (m * n_latents)
    causal = res[res.snp == CAUSAL].set_index("latent")["p"]
    best = causal.idxmin()
    own = res[res.latent == best]
    null = own[own.snp != CAUSAL]["p"].dropna()
    lam = float(np.median(stats.chi2.isf(null, 1)) / MEDIAN_CHI2_1DF)
    top = own.loc[own["p"].idxmin(), "snp"]
    strat = res[res.snp == STRAT]["p"].min()
    return {
        "n_latents": int(n_latents),
        "bonferroni": threshold,
        "best_latent": best,
        "p_causal": float(causal[best]),
        "causal_is_top_hit": bool(top == CAUSAL),
        "lambda_gc": lam,
        "min_p_null_snps": float(res[res.snp != CAUSAL]["p"].min()),
        "min_p_strat_snp": float(strat),
        "min_p_any": float(res["p"].min()),
        "passes": bool(top == CAUSAL and causal[best] < threshold and 0.9 <= lam <= 1.15),
    }


def manhattan(res: pd.DataFrame, latent: str, threshold: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    own = res[res.latent == latent].sort_values("snp")
    fig, ax = plt.subplots(figsize=(8, 3))
    ax.scatter(own.snp, -np.log10(own.p), s=4, c=np.where(own.snp == CAUSAL, "crimson", "grey"))
    ax.axhline(-np.log10(threshold), color="k", lw=0.8, ls="--", label="Bonferroni (SNPs x latents)")
    ax.set_xlabel("SNP (planted causal SNP in red)")
    ax.set_ylabel("-log10 p")
    ax.set_title(f"plink2 --glm on latent {latent} (site as covariate)")
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def planted(out: Path, n: int, m: int, effect: float, latent_dim: int = 8, epochs: int = 8, seed: int = 0) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    dosage = write_genotypes(out / "geno", n, m, seed)
    cohort = write_cohort(out / "cohort", dosage, effect, seed)
    run_dir = train_and_embed(cohort, latent_dim, epochs, seed)
    res = run_gwas(run_dir, cohort, out / "geno", out)
    result = {"n": n, "m": m, "effect": effect, "seconds": round(time.time() - t0, 1), **evaluate(res, m)}
    res.to_csv(out / "glm_all.tsv", sep="\t", index=False)
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--m", type=int, default=3000)
    p.add_argument("--effect", type=float, default=0.8, help="cavity radius shift (pixels) per causal allele")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--out", default="gwas_planted")
    p.add_argument("--null", action="store_true", help="also run the same pipeline with --effect 0")
    p.add_argument("--write", default="", help="markdown summary file")
    p.add_argument("--plot", default="", help="Manhattan plot of the best latent (PNG)")
    a = p.parse_args()
    out = Path(a.out)
    runs = {"planted": planted(out / "planted", a.n, a.m, a.effect, epochs=a.epochs)}
    if a.null:
        runs["null"] = planted(out / "null", a.n, a.m, 0.0, epochs=a.epochs)
    print(json.dumps(runs, indent=1))
    if a.plot:
        res = pd.read_csv(out / "planted" / "glm_all.tsv", sep="\t")
        manhattan(res, runs["planted"]["best_latent"], runs["planted"]["bonferroni"], Path(a.plot))
    if a.write:
        lines = [
            "| run | effect (px/allele) | p of the causal SNP (best latent) | causal SNP top hit | λ_GC (best latent)"
            " | smallest p of any other SNP | smallest p, stratification SNP | Bonferroni | seconds |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for name, r in runs.items():
            lines.append(
                f"| {name} | {r['effect']} | {r['p_causal']:.3g} ({r['best_latent']}) | {r['causal_is_top_hit']}"
                f" | {r['lambda_gc']:.3f} | {r['min_p_null_snps']:.3g} | {r['min_p_strat_snp']:.3g} | "
                f"{r['bonferroni']:.3g} | {r['seconds']} |"
            )
        head = f"N = {a.n} participants, M = {a.m} SNPs, an 8-latent VAE ({a.epochs} epochs), site as covariate.\n\n"
        Path(a.write).write_text(head + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
