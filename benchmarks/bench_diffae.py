"""DiffAE speed on this machine: training steps/s, embedding throughput, FLOP/s, data-loader rate.

python benchmarks/bench_diffae.py [--quick] [--threads N] [--rows 2d,3d_small,3d_published]

One training step = eps-MSE at random t through encoder + UNet, backward, Adam
step (as the ancestor's reference numbers). Embedding = the semantic encoder
alone (--test_emb_only). FLOPs are counted with torch.utils.flop_counter and
compared with this machine's measured fp32 matmul peak. The data-loader rows
compare our H5Samples (h5py slicing, normalisation) with raw h5py reads of the
same samples.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from Engineering.data.dataset import H5Samples, SampleSpec, enumerate_samples
from Engineering.data.index import Selection, scan
from Engineering.data.transforms import axis_perm
from Engineering.Engines.WarpDrives.DiffAE import DiffAE, DiffAEConfig
from Engineering.Science.diffusion import GaussianDiffusion

# (name, is3D, input_shape, net_ch, latent, batch, ancestor s/step, ancestor subjects/s embedding)
ROWS = {
    "2d": (False, (64, 64), 32, 64, 8, 0.78, 274.0),
    "3d_small": (True, (16, 64, 64), 16, 32, 4, 12.6, 5.7),
    "3d_published": (True, (50, 128, 128), 32, 128, 1, 89.0, 0.36),
}


def matmul_peak(seconds: float = 2.0) -> float:
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    a @ b
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        n += 1
    return 2 * 2048**3 * n / (time.perf_counter() - t0)


def bench_model(is3D, shape, net_ch, latent, batch, n_steps: int, n_embed: int) -> dict:
    torch.manual_seed(0)
    cfg = DiffAEConfig(is3D=is3D, in_channels=1, input_shape=shape, latent_dim=latent, net_ch=net_ch)
    net = DiffAE(cfg)
    diff = GaussianDiffusion(T=1000)
    opt = torch.optim.Adam(net.parameters(), lr=1e-4)
    x = torch.randn(batch, 1, *shape)

    def step():
        t = torch.randint(0, 1000, (batch,))
        loss = diff.loss(net, x, net.encode(x), t, torch.randn_like(x))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    with FlopCounterMode(display=False) as fc:
        step()  # also the warm-up
    step_flops = fc.get_total_flops()
    t0 = time.perf_counter()
    for _ in range(n_steps):
        step()
    s_per_step = (time.perf_counter() - t0) / n_steps

    net.eval()
    xe = torch.randn(max(batch, 4 if is3D else 32), 1, *shape)
    with torch.no_grad():
        with FlopCounterMode(display=False) as fc:
            net.encode(xe)
        emb_flops = fc.get_total_flops()
        t0 = time.perf_counter()
        for _ in range(n_embed):
            net.encode(xe)
        subj_per_s = n_embed * xe.shape[0] / (time.perf_counter() - t0)
    return {"s_per_step": s_per_step, "step_flops": step_flops, "subj_per_s": subj_per_s,
            "emb_flops_per_subj": emb_flops / xe.shape[0], "params_M": sum(p.numel() for p in net.parameters()) / 1e6}


def _cohort(path: Path, n: int, shape) -> None:
    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as h5:
        for i in range(n):
            data = rng.integers(0, 2000, size=shape, dtype=np.int16)
            ds = h5.create_dataset(f"{1000 + i}/20208/2/primary_cine_0", data=data)
            ds.attrs.update({"min_val": 0.0, "max_val": 2000.0})


def bench_loader(is3D: bool, n: int = 24, shape=(1, 50, 1, 128, 128), repeats: int = 2) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "data.h5"
        _cohort(path, n, shape)
        records = scan(path, Selection())
        # 3D: cine frames as the volume axis (DS_slice_dim 1); 2D: one frame per sample
        perm = axis_perm(0, 1 if is3D else 2)
        spec = SampleSpec(is3D=is3D, input_shape=(50, 128, 128) if is3D else (128, 128), perm=perm,
                          split_t=not is3D, split_s=False if is3D else True, norm_type="minmaxvol")
        ds = H5Samples(path, records, enumerate_samples(records, spec), spec)
        for i in range(min(len(ds), 4)):
            ds[i]  # open the file, warm the page cache
        t0 = time.perf_counter()
        for _ in range(repeats):
            for i in range(len(ds)):
                ds[i]
        ours = repeats * len(ds) / (time.perf_counter() - t0)
        with h5py.File(path, "r") as h5:
            t0 = time.perf_counter()
            for _ in range(repeats):
                for ref in ds.samples:
                    rec = records[ref.record]
                    d = h5[rec.h5path]
                    d[:, :, 0:1] if is3D else d[:, ref.t:ref.t + 1, ref.s:ref.s + 1]  # noqa: B018
            raw = repeats * len(ds) / (time.perf_counter() - t0)
    return {"ours": ours, "raw": raw, "ratio": ours / raw, "n": len(ds)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="fewer repetitions, skip the published 3D size")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--rows", default="2d,3d_small,3d_published")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    rows = [r for r in a.rows.split(",") if not (a.quick and r == "3d_published")]
    peak = matmul_peak()
    print(f"threads {a.threads}; fp32 matmul peak {peak / 1e9:.1f} GFLOP/s\n")
    print("| config | batch | params (M) | s/step | ancestor s/step | speed-up | train GFLOP/s (% peak) "
          "| embed subj/s | ancestor subj/s | speed-up |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name in rows:
        is3D, shape, ch, lat, bs, anc_step, anc_emb = ROWS[name]
        big = name == "3d_published"
        r = bench_model(is3D, shape, ch, lat, bs, n_steps=1 if big or a.quick else 3, n_embed=1 if big else 3)
        gflops = r["step_flops"] / r["s_per_step"] / 1e9
        print(f"| {name} {'x'.join(map(str, shape))} ch{ch} L{lat} | {bs} | {r['params_M']:.1f} | {r['s_per_step']:.2f} "
              f"| {anc_step} | {anc_step / r['s_per_step']:.1f}x | {gflops:.1f} ({100 * gflops * 1e9 / peak:.0f}%) "
              f"| {r['subj_per_s']:.2f} | {anc_emb} | {r['subj_per_s'] / anc_emb:.1f}x |")
    print("\n| data loader (int16 cine 1x50x1x128x128) | samples | ours samples/s | raw h5py samples/s | ours/raw |")
    print("|---|---|---|---|---|")
    for is3D in (True, False):
        r = bench_loader(is3D)
        print(f"| {'3D volume (50x128x128)' if is3D else '2D frame (128x128)'} | {r['n']} | {r['ours']:.0f} "
              f"| {r['raw']:.0f} | {100 * r['ratio']:.0f}% |")


if __name__ == "__main__":
    main()
