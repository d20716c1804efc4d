"""How good are the latents? DiffAE and a VAE against PCA of the pixels, on real images, at a CPU budget.

For each dataset of ``quality_datasets.py`` (real images that ship in Python packages: scikit-learn's digits,
10 classes; MRI patches of nilearn's MNI152 template, 3 tissue classes) this script trains

* ``DiffAE``: ``main_diffAE.py`` as a user runs it (the "small data" recipe: its demo defaults for 100 epochs
  instead of 8, cosine decay, dropout 0; otherwise only ``--latent_dim`` and the data flags set),
* ``VAE``: ``main_recon.py``, the "small data" VAE recipe: a beta-VAE with beta 0.125 at 32x32 (the DiffAE
  recipe's size) with an EMA of the weights, 20 epochs (README "How good are the latents?" lists what
  else was tried),

on the training split, embeds the held-out test subjects, and scores them with ``main_benchmark`` beside
``baseline_pca_pixels`` (PCA of the raw pixels, same dimension) and ``baseline_random`` (the chance level):
standardised logistic-regression probe, repeated stratified 5-fold balanced accuracy on the test subjects, with a
95 % bootstrap CI. It also runs the latent-usage diagnostic of the DiffAE: each test subject's DDIM code x_T
(inverted with its own z) rendered with its own z vs with another subject's z. If swapping z barely changes the
rendering, the UNet ignores the code.

    python benchmarks/bench_quality.py [--datasets digits mri_tissue] [--out bench_quality] [--reuse]
        [--diffae_args "--lr 3e-4"] [--tag NAME] [--write benchmarks/results/quality.md]

Prints one JSON line per (dataset, representation) and a markdown table. Not part of the tests (it trains for
minutes); ``--reuse`` keeps finished runs. Needs nilearn for mri_tissue (``pip install -e .[bench]``).
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from quality_datasets import DATASETS, write_dataset  # noqa: E402

LATENT = 16
# the budget (README "How good are the latents?"). DiffAE: the "small data" recipe, main_diffAE's demo defaults
# trained for 100 epochs of 50 batches instead of 8 with cosine learning-rate decay and no dropout (about 12
# minutes alone on 2 CPU cores; below ~100 epochs it does not reach PCA on the MRI patches); VAE: the "small data"
# VAE recipe, a beta-VAE (beta 0.125) at 32x32 with an EMA of the weights for 20 epochs (under a minute)
BUDGET = {
    "DiffAE": ["--num_epochs", "100", "--lr_decay_type", "3", "--model§DiffAE§dropout", "0"],
    "VAE": [
        "--pythae_model",
        "beta_vae",
        "--model§pythae§models§beta_vae§beta",
        "0.125",
        "--input_shape",
        "32,32",
        "--interp_fact",
        "0.5",
        "--use_ema",
        "--num_epochs",
        "20",
    ],
}
# training seeds: the executors' default seed, then SEED + 1, ...; the mean over seeds is the point estimate. The
# gaps to PCA are a few thousandths, the size of the seed-to-seed spread (README), so the cheap VAE is trained
# five times and the DiffAE (~12 minutes a run) three times
SEED = 1701
SEEDS = {"DiffAE": 3, "VAE": 5}
# data-describing flags only: patches of one volume share its intensity scale (see quality_datasets)
DATA_FLAGS = {"digits": [], "mri_tissue": ["--norm_type", "minmaxvol"]}
MODELS = {
    "DiffAE": ("Executors/main_diffAE.py", BUDGET["DiffAE"]),
    "VAE": ("Executors/main_recon.py", BUDGET["VAE"]),
}


def _run(args: list[str]) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"{' '.join(args[:1])} failed:\n{proc.stderr[-3000:]}")
    return time.perf_counter() - t0


def train_and_embed(script: str, flags: list[str], data: Path, run_id: str, reuse: bool) -> tuple[Path, float | None]:
    """Train on the training split and embed the test split (one executor call); (emb.h5, seconds)."""
    run = data / "runs" / run_id
    emb, timing = run / "Output" / "emb.h5", run / "bench_seconds.json"
    if reuse and emb.exists():  # a finished run: its recorded wall time (None if it was not timed here)
        return emb, json.loads(timing.read_text())["seconds"] if timing.exists() else None
    secs = _run(
        [
            script,
            "--datajson_path",
            str(data / "dataNpath.json"),
            "--fulltrainID",
            run_id,
            "--latent_dim",
            str(LATENT),
            "--no-progress_bar",
            "--test_emb_only",
            *flags,
        ]
    )
    timing.write_text(json.dumps({"seconds": secs, "flags": flags}))
    return emb, secs


def embed_raw(data: Path, run_id: str, flags: list[str], reuse: bool) -> Path:
    """The same best checkpoint embedded with the raw (not EMA) weights: Output_raw/emb.h5."""
    emb = data / "runs" / run_id / "Output_raw" / "emb.h5"
    if not (reuse and emb.exists()):
        _run(
            [
                "Executors/main_diffAE.py",
                "--datajson_path",
                str(data / "dataNpath.json"),
                "--fulltrainID",
                run_id,
                "--latent_dim",
                str(LATENT),
                "--resume",
                "--load_best",
                "--run_mode",
                "2",
                "--no-test_ema",
                "--test_emb_only",
                "--output_suffix",
                "raw",
                "--no-progress_bar",
                *flags,
            ]
        )
    return emb


def latent_usage(run_dir: Path, data: Path, n: int = 64, seed: int = 0) -> dict:
    """The DiffAE's latent-usage diagnostic of ``main_benchmark --run`` (``Eval/latent_usage``) on n test subjects:
    each one's own x_T rendered with its own z and with the next subject's z; MSE in the model's input units."""
    from ast import literal_eval

    import pandas as pd
    import torch

    from Engineering.Engines.saved_runs import load_run, sample_images
    from Engineering.Eval.latent_usage import pointwise_latent_usage

    run = load_run(run_dir)
    ids = pd.read_csv(data / "labels.tsv", sep="\t", dtype=str)["FID"]
    test = set(literal_eval(pd.read_csv(data / "folds.csv")["test"][0]))
    rows = pd.DataFrame({"patientID": [i for i in ids if i in test]})
    rows = rows.assign(fieldID="F0", instanceID="2", key="primary_img_0", c=0, t=0, s=0)
    x = torch.from_numpy(sample_images(run, rows, data / "data.h5", n, seed)).float()

    def render(inputs, codes):
        with torch.no_grad():
            return [r.numpy() for r in run.render(torch.from_numpy(inputs), [torch.from_numpy(c) for c in codes])]

    with torch.no_grad():
        z = run.encode(x).numpy()
    e = pointwise_latent_usage(render, x.numpy(), z, x.numpy())
    return {
        "n": len(x),
        "mse_own_z": float(e["own"].mean()),
        "mse_swapped_z": float(e["swap"].mean()),
        "mse_between_subjects": float(e["between"].mean()),
        "swap_over_own": float(e["swap"].mean() / e["own"].mean()),
        "latent_usage_swap": float(((e["swap"] - e["own"]) / e["between"]).mean()),
    }


def score(data: Path, embs: dict[str, Path], out: Path) -> dict:
    args = [
        "Executors/main_benchmark.py",
        "--latents",
        *[f"{k}={v}" for k, v in embs.items()],
        "--labels",
        str(data / "labels.tsv"),
        "--label_cols",
        "label",
        "--pixels",
        str(data / "data.h5"),
        "--out",
        str(out),
    ]
    _run(args)
    return json.loads((out / "metrics.json").read_text())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS)
    p.add_argument("--out", default="bench_quality")
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--diffae_args", default="", help="extra main_diffAE flags (a variant of the recipe)")
    p.add_argument("--vae_args", default="", help="extra main_recon flags")
    p.add_argument("--tag", default="default", help="run-name suffix of this variant")
    p.add_argument(
        "--vae_seeds",
        type=int,
        default=SEEDS["VAE"],
        help="training seeds of the VAE (their mean is its point estimate)",
    )
    p.add_argument("--diffae_seeds", type=int, default=SEEDS["DiffAE"], help="training seeds of the DiffAE")
    p.add_argument(
        "--seed_offset",
        type=int,
        default=0,
        help="start at seed SEED + this (e.g. 1: more seeds beside runs already made)",
    )
    p.add_argument("--reuse", action="store_true", help="keep finished runs")
    p.add_argument("--no-usage", dest="usage", action="store_false", help="skip the latent-usage diagnostic")
    p.add_argument("--raw_too", action="store_true", help="also score the DiffAE's raw (not EMA) encoder")
    p.add_argument("--write", default="", help="also write the markdown table to this file")
    args = p.parse_args()
    out = Path(args.out).resolve()
    extra = {"DiffAE": shlex.split(args.diffae_args), "VAE": shlex.split(args.vae_args)}
    seeds = {"DiffAE": args.diffae_seeds, "VAE": args.vae_seeds}
    lines = [
        "| data | representation | probe balanced accuracy [95% CI] | vs PCA | kNN accuracy | train+embed s |",
        "|---|---|---|---|---|---|",
    ]
    usage_lines = []
    for name in args.datasets:
        data = out / name
        if not (data / "data.h5").exists() or not args.reuse:
            write_dataset(name, data)
        embs, secs, seed_runs = {}, {}, {}
        for model in args.models:
            script, flags = MODELS[model]
            for i in range(args.seed_offset, args.seed_offset + seeds[model]):  # default seed, then 1702, ...
                run_id = f"{model}_{args.tag}" + (f"_seed{SEED + i}" if i else "")
                seed_flag = ["--seed", str(SEED + i)] if i else []
                embs[run_id], secs[run_id] = train_and_embed(
                    script, [*flags, *DATA_FLAGS[name], *extra[model], *seed_flag], data, run_id, args.reuse
                )
                seed_runs.setdefault(f"{model}_{args.tag}", []).append(run_id)
        if args.raw_too and "DiffAE" in args.models:
            embs[f"DiffAE_{args.tag}_raw"] = embed_raw(
                data, f"DiffAE_{args.tag}", [*DATA_FLAGS[name], *extra["DiffAE"]], args.reuse
            )
        metrics = score(data, embs, data / f"bench_{args.tag}")
        pca = metrics["baseline_pca_pixels"]["probe_balanced_accuracy/label"]["value"]
        for rep, values in metrics.items():
            if not isinstance(values, dict) or "probe_balanced_accuracy/label" not in values:
                continue
            m, k = values["probe_balanced_accuracy/label"], values.get("knn_accuracy/label", {})
            row = {
                "dataset": name,
                "representation": rep,
                "probe_bal_acc": round(m["value"], 3),
                "ci": [round(m["ci_low"], 3), round(m["ci_high"], 3)],
                "vs_pca": round(m["value"] / pca, 3),
                "knn_acc": round(k.get("value", float("nan")), 3),
                "n": m.get("n"),
                "seconds": None if secs.get(rep) is None else round(secs[rep]),
            }
            if rep.startswith("DiffAE") and not rep.endswith("_raw") and args.usage:
                row["latent_usage"] = latent_usage(data / "runs" / rep, data)
                u = row["latent_usage"]
                usage_lines.append(
                    f"| {name} | {rep} | {u['mse_own_z']:.4f} | {u['mse_swapped_z']:.4f} | "
                    f"{u['swap_over_own']:.1f}× | {u['mse_between_subjects']:.4f} | "
                    f"{u['latent_usage_swap']:.3f} |"
                )
            print(json.dumps(row), flush=True)
            lines.append(
                f"| {name} | {rep} | {row['probe_bal_acc']:.3f} [{row['ci'][0]:.3f}, {row['ci'][1]:.3f}] | "
                f"{row['vs_pca']:.3f}× | {row['knn_acc']:.3f} | {row['seconds'] or ''} |"
            )
        for base, runs in seed_runs.items():  # several training seeds: their mean is the point estimate
            if len(runs) < 2:
                continue
            vals = [metrics[r]["probe_balanced_accuracy/label"]["value"] for r in runs]
            knn = [metrics[r].get("knn_accuracy/label", {}).get("value", float("nan")) for r in runs]
            mean = sum(vals) / len(vals)
            print(
                json.dumps(
                    {
                        "dataset": name,
                        "representation": f"{base} mean of {len(runs)} seeds",
                        "probe_bal_acc": round(mean, 3),
                        "seeds": [round(v, 3) for v in vals],
                        "vs_pca": round(mean / pca, 3),
                    }
                ),
                flush=True,
            )
            lines.append(
                f"| {name} | **{base}, mean of {len(runs)} training seeds** | **{mean:.3f}** (seeds "
                f"{', '.join(f'{v:.3f}' for v in vals)}) | {mean / pca:.3f}× | "
                f"{sum(knn) / len(knn):.3f} | |"
            )
    table = "\n".join(lines)
    if usage_lines:
        table += (
            "\n\nLatent usage (DiffAE, test subjects, rendering from each subject's own x_T; MSE in the model's "
            "input units; latent_usage_swap as main_benchmark --run reports it: (swapped - own) / two "
            "subjects' distance):\n\n| data | run | own z | another subject's z | ratio | two subjects' images "
            "| latent_usage_swap |\n|---|---|---|---|---|---|---|\n" + "\n".join(usage_lines)
        )
    print(table)
    if args.write:
        Path(args.write).write_text(table + "\n")


if __name__ == "__main__":
    main()
