"""How far are bf16 latents (``--embed_precision bf16``) from fp32 ones? The tolerance the README states.

python benchmarks/bench_embed_bf16.py [--out bench_bf16] [--reuse] [--published_subjects 6]

1. A trained model: a 3D DiffAE trained on the bundled demo cohort (cine time as the volume axis, 16x32x32, the
   demo recipe for 6 epochs), every subject of the cohort embedded twice through ``main_diffAE --run_mode 2``:
   fp32 and ``--embed_precision bf16``. Reported: per-subject cosine similarity and relative errors between the
   two latents (the held-out test subjects and the whole cohort), and the downstream probe: ``main_benchmark``'s
   ridge R^2 of every continuous phenotype of the demo (cavity radius, wall thickness, ejection fraction, ...)
   and the logistic probe's balanced accuracy of ef_class, from each set of latents, with the change.
2. The published architecture (3D 50x128x128, net_ch 32, latent 128; random weights, as no published weights are
   available offline): the same per-subject agreement on phantom volumes, where bf16 rounding accumulates
   over the deepest encoder.

Prints JSON lines and a markdown summary. Not part of the tests (it trains for minutes).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from Engineering.Engines.WarpDrives.DiffAE.network import DiffAE, DiffAEConfig  # noqa: E402

KEYS = ["patientID", "fieldID", "instanceID", "key", "c", "t", "s"]
RECIPE = [
    "--is3D",
    "1",
    "--input_shape",
    "16,32,32",
    "--json§DS_slice_dim",
    "1",
    "--num_epochs",
    "6",
    "--batch_size",
    "8",
    "--n_train_batches",
    "20",
    "--no-progress_bar",
]


def _run(args: list[str]) -> None:
    proc = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"{args[0]} failed:\n{proc.stderr[-3000:]}")


def agreement(z32: np.ndarray, z16: np.ndarray) -> dict:
    """Per-subject cosine similarity, max relative error (max |dz| / max |z|) and relative L2 error."""
    cos = (z32 * z16).sum(1) / (np.linalg.norm(z32, axis=1) * np.linalg.norm(z16, axis=1))
    max_rel = np.abs(z16 - z32).max(1) / np.abs(z32).max(1)
    l2_rel = np.linalg.norm(z16 - z32, axis=1) / np.linalg.norm(z32, axis=1)
    return {
        "n": len(z32),
        "cos_min": float(cos.min()),
        "cos_median": float(np.median(cos)),
        "max_rel_err_max": float(max_rel.max()),
        "max_rel_err_median": float(np.median(max_rel)),
        "l2_rel_err_max": float(l2_rel.max()),
    }


def _latents(out_dir: Path) -> pd.DataFrame:
    df = pd.read_csv(out_dir / "emb.tsv", sep="\t", dtype={k: str for k in KEYS[:4]})
    return df.sort_values(KEYS).reset_index(drop=True)


def trained_model(out: Path, reuse: bool) -> dict:
    save = out / "runs"
    common = ["Executors/main_diffAE.py", "--json§save_path", str(save), "--fulltrainID", "bf16tol", *RECIPE]
    run_dir = save / "bf16tol"
    if not (reuse and (run_dir / "Checkpoints" / "last.ckpt").exists()):
        t0 = time.perf_counter()
        _run([*common, "--run_mode", "1"])
        print(f"trained in {time.perf_counter() - t0:.0f} s", flush=True)
    outs = {}
    for prec in ("32", "bf16"):
        suffix = f"all_{prec}"
        if not (reuse and (run_dir / f"Output_{suffix}" / "emb.tsv").exists()):
            # the whole cohort (foldCSV 0), every subject, through the executor as a user runs it
            _run(
                [
                    *common,
                    "--run_mode",
                    "2",
                    "--resume",
                    "--test_emb_only",
                    "--json§foldCSV",
                    "0",
                    "--output_suffix",
                    suffix,
                    "--embed_precision",
                    prec,
                ]
            )
        outs[prec] = run_dir / f"Output_{suffix}"
    a, b = _latents(outs["32"]), _latents(outs["bf16"])
    if not a[KEYS].equals(b[KEYS]):
        sys.exit("fp32 and bf16 runs embedded different samples")
    cols = [c for c in a.columns if c.startswith("Z")]
    res = {"model": "demo 3D DiffAE 16x32x32 (trained)", "samples": agreement(a[cols].to_numpy(), b[cols].to_numpy())}
    demo = Path.home() / ".cache" / "imlatent" / "demo"
    bench = out / "probe"
    _run(
        [
            "Executors/main_benchmark.py",
            "--latents",
            f"fp32={outs['32']}",
            f"bf16={outs['bf16']}",
            "--labels",
            str(demo / "phenotypes.tsv"),
            "--out",
            str(bench),
        ]
    )
    metrics = json.loads((bench / "metrics.json").read_text())
    r2 = {}
    for name in ("fp32", "bf16"):
        # ridge R² of the continuous phenotypes, balanced accuracy of the categorical one (ef_class)
        r2[name] = {
            k: v["value"]
            for k, v in metrics[name].items()
            if k.startswith(("r2/", "probe_balanced_accuracy/")) and isinstance(v, dict)
        }
    res["probe_r2"] = r2
    res["probe_r2_max_abs_change"] = max(abs(r2["bf16"][k] - r2["fp32"][k]) for k in r2["fp32"])
    return res


def published_shape(n: int) -> dict:
    torch.manual_seed(0)
    net = DiffAE(DiffAEConfig(is3D=True, in_channels=1, input_shape=(50, 128, 128), latent_dim=128, net_ch=32)).eval()
    fast = net.fast_encoder(torch.bfloat16)
    g = torch.Generator().manual_seed(1)
    yy, xx = torch.meshgrid(torch.arange(128.0), torch.arange(128.0), indexing="ij")
    z32, z16 = [], []
    with torch.inference_mode():
        for _ in range(n):  # a beating blob at a random place and size on noise, in [-1, 1]
            cy, cx, r = torch.rand(3, generator=g) * torch.tensor([40.0, 40.0, 12.0]) + torch.tensor([44, 44, 12])
            frames = [
                torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * (r * (1 + 0.2 * np.sin(f / 8))) ** 2))
                for f in range(50)
            ]
            x = torch.stack(frames)[None, None] + 0.05 * torch.randn(1, 1, 50, 128, 128, generator=g)
            x = 2 * (x - x.min()) / (x.max() - x.min()) - 1
            z32.append(net.encode(x)[0].numpy())
            z16.append(fast(x)[0].numpy())
    return {
        "model": "published architecture 50x128x128 (random weights)",
        "samples": agreement(np.stack(z32), np.stack(z16)),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="bench_bf16")
    p.add_argument("--reuse", action="store_true")
    p.add_argument("--published_subjects", type=int, default=6)
    a = p.parse_args()
    out = Path(a.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    rows = [trained_model(out, a.reuse), published_shape(a.published_subjects)]
    for r in rows:
        print(json.dumps(r), flush=True)
    print("\n| model | samples | cosine min (median) | max rel. error max (median) | rel. L2 error max |")
    print("|---|---|---|---|---|")
    for r in rows:
        s = r["samples"]
        print(
            f"| {r['model']} | {s['n']} | {s['cos_min']:.6f} ({s['cos_median']:.6f}) | {s['max_rel_err_max']:.4f} "
            f"({s['max_rel_err_median']:.4f}) | {s['l2_rel_err_max']:.4f} |"
        )
    r2 = rows[0]["probe_r2"]
    print("\n| probe (metric/phenotype) | fp32 latents | bf16 latents | change |\n|---|---|---|---|")
    for k in r2["fp32"]:
        print(f"| {k} | {r2['fp32'][k]:.4f} | {r2['bf16'][k]:.4f} | {r2['bf16'][k] - r2['fp32'][k]:+.4f} |")


if __name__ == "__main__":
    main()
