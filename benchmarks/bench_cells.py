"""Classical vs rotation-invariant models on the synthetic 3D cell cohort (@cells; seed 003's comparison).

Trains, for a few CPU minutes each (longer than the executors' demo defaults, which are sized for a first
look), the rotation-invariant image AE (``main_rotinv``), a classical image AE and a VAE (``main_recon
--pythae_model ae / vae``, 3D), a 3D DiffAE (``main_diffAE``, its UNet without the self-attention at 16³, which
costs 6x the step time on a CPU), and the Vector Neuron and DGCNN point-cloud AEs (``main_pointcloud``) on the
same cells and folds, then scores the test cells' latents with ``main_benchmark`` and every model with
``--run``: the probes of the puncta placement rule, compactness, archetypes, outlier detection of the planted
abnormal cells (the reference's classifier and our AUROC), the reference's rotation invariance error (90° turns
about z) beside ours under random SO(3) rotations (of volumes or clouds) and rotation sensitivity (90° steps and
flips), pose equivariance, the reference's evolution energy and embedding distance beside our decoded path ratio
and interpolation distance of decoded latent segments, latent usage, reconstruction error (MSE; the reference's
Chamfer for clouds) and efficiency. Writes ``--out``/report/ (metrics.json, metrics.csv, report.html
with the z-scored radar) and a Markdown table (``--write``). Not part of the tests (about 20 minutes on 2 CPU
cores); run it alone.

    python benchmarks/bench_cells.py [--out bench_cells] [--write benchmarks/results/cells.md] [--radar PNG]
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LATENT = "16"
IMAGE_3D = ["--datajson_path", "Configs/dataNpath_cells.json", "--is3D", "--input_shape", "32,32,32"]
MODELS = {  # name -> (executor, flags); every run: same data (@cells), folds and latent size; a few CPU minutes each
    "RotInv": ("Executors/main_rotinv.py", ["--num_epochs", "8"]),
    "AE_3D": (
        "Executors/main_recon.py",
        ["--pythae_model", "ae", *IMAGE_3D, "--batch_size", "8", "--num_epochs", "20", "--lr", "2e-3"],
    ),
    "VAE_3D": (
        "Executors/main_recon.py",
        ["--pythae_model", "vae", *IMAGE_3D, "--batch_size", "8", "--num_epochs", "20", "--lr", "2e-3"],
    ),
    "DiffAE_3D": (
        "Executors/main_diffAE.py",
        [*IMAGE_3D, "--batch_size", "8", "--num_epochs", "8", "--model§DiffAE§attn_res", "[]", "--test_emb_only"],
    ),
    "VN_points": ("Executors/main_pointcloud.py", ["--model§PointCloud§encoder", "vn", "--num_epochs", "20"]),
    "DGCNN_points": ("Executors/main_pointcloud.py", ["--model§PointCloud§encoder", "dgcnn", "--num_epochs", "20"]),
}
ROWS = (
    "probe_balanced_accuracy/rule",
    "knn_accuracy/rule",
    "outlier_detection/outlier",
    "outlier_auroc/outlier",
    "rotation_invariance_error",
    "rotation_invariance",
    "pose_equivariance_error",
    "rotation_sensitivity",
    "reconstruction_mse",
    "reconstruction_chamfer",
    "reconstruction_sinkhorn",
    "latent_usage_swap",
    "evolution_energy",
    "embedding_distance",
    "decoded_path_ratio",
    "interpolation_distance",
    "archetype_r2",
    "parameters_M",
    "inference_ms_per_sample",
)


def _run(args: list[str], env: dict) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, env=env)
    if proc.returncode:
        sys.exit(f"{args[0]} failed:\n{proc.stderr[-3000:]}")
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="bench_cells")
    p.add_argument("--write", default="", help="also write the markdown table to this file")
    p.add_argument("--radar", default="", help="also save the report's radar chart as this PNG")
    args = p.parse_args()
    out = Path(args.out).resolve()
    env = {**os.environ, "IMLATENT_CACHE": str(out / "cache"), "HF_HUB_OFFLINE": "1"}
    seconds = {}
    for name, (script, flags) in MODELS.items():
        seconds[name] = _run(
            [
                script,
                "--fulltrainID",
                name,
                "--json§save_path",
                str(out / "runs"),
                "--latent_dim",
                LATENT,
                "--no-progress_bar",
                "--no-tbactive",
                *flags,
            ],
            env,
        )
        print(f"{name}: {seconds[name]:.0f} s", flush=True)
    runs = out / "runs"
    report = out / "report"
    _run(
        [
            "Executors/main_benchmark.py",
            "--latents",
            *[f"{n}={runs / n}" for n in MODELS],
            "--labels",
            str(out / "cache" / "cells_v2" / "phenotypes.tsv"),
            "--label_cols",
            "rule",
            "--outlier_col",
            "outlier",
            "--run",
            *[f"{n}={runs / n}" for n in MODELS],
            "--run_max_samples",
            "32",
            "--archetypes",
            "4",
            "--pixels",
            str(out / "cache" / "cells_v2" / "data.h5"),
            "--out",
            str(report),
        ],
        env,
    )
    metrics = json.loads((report / "metrics.json").read_text())
    lines = ["| model | train s | " + " | ".join(ROWS) + " |", "|---|---|" + "---|" * len(ROWS)]
    for name in [*MODELS, "baseline_pca_pixels", "baseline_random"]:
        cells = []
        for row in ROWS:
            rec = metrics.get(name, {}).get(row)
            if not rec or rec.get("value") is None:
                cells.append("—")
            elif rec.get("ci_low") is not None and rec["ci_low"] != rec["ci_high"]:
                cells.append(f"{rec['value']:.3g} [{rec['ci_low']:.3g}, {rec['ci_high']:.3g}]")
            else:
                cells.append(f"{rec['value']:.3g}")
        lines.append(f"| {name} | {seconds.get(name, 0):.0f} | " + " | ".join(cells) + " |")
    lines.append(
        "\nDirections: probes, kNN, outlier detection and AUROC (0.5 = chance), latent usage, archetype "
        "R² higher is better; rotation metrics, pose error (degrees), reconstruction errors, evolution "
        "energy, embedding distance, decoded path ratio (>= 1), interpolation distance, parameters (M) and "
        "ms per sample lower is better. The reference's definitions (AllenCell benchmarking_representations)"
        ": outlier_detection, rotation_invariance_error, reconstruction_chamfer, reconstruction_sinkhorn, "
        "evolution_energy, "
        "embedding_distance; ours: outlier_auroc, rotation_invariance (latent change under 4 random SO(3) "
        "rotations over the between-sample spread), rotation_sensitivity (90° in-plane steps and flips), "
        "decoded_path_ratio, interpolation_distance. — : not "
        "applicable to the model (see report.html for the reason). "
        "Regenerate: `python benchmarks/bench_cells.py --write benchmarks/results/cells.md`."
    )
    table = "\n".join(lines)
    print(table)
    if args.write:
        Path(args.write).write_text(table + "\n")
    if args.radar:
        html = (report / "report.html").read_text()
        found = re.search(r"data:image/png;base64,([A-Za-z0-9+/=]+)", html[html.find("Radar") :])
        if found:
            Path(args.radar).write_bytes(base64.b64decode(found.group(1)))


if __name__ == "__main__":
    main()
