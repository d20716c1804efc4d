"""DiffAE speed on this machine, side by side with the ancestor: training s/step (fp32 and bf16), embedding
subjects/s, FLOP/s against the measured peak of each figure's own precision and memory layout.

python benchmarks/bench_diffae.py [--config published|small3d|2d|all] [--ancestor PATH] [--threads N]
    [--steps N] [--compile] [--no-profile] [--write FILE]
python benchmarks/bench_diffae.py --config published --trajectory N

One training step = eps-MSE at a random t through encoder + UNet, backward, Adam step (the ancestor's
procedure), timed for ours in fp32, ours under bfloat16 autocast (what ``--ampmode bf16-mixed`` runs: the
network's matmuls and convolutions in bf16; weights, Adam state, schedule and loss float32) and the ancestor in
fp32, the three alternating. Our steps pull their batch from our DataLoader over an int16 HDF5 cohort of the
configuration's shape (default workers), so the time the loop waits for data is measured, not assumed.
Embedding = the semantic encoder alone, eval, no grad (``--test_emb_only``): fp32, and bf16 through the encoder
copy that ``--embed_precision bf16`` uses (channels-last for 3D; ``--compile`` torch.compiles it, as
``--compile_model``; its first call, compilation included, is ``bf16_first_call_s``).

Peaks (``peaks.py``): in the same run, a GEMM and every distinct convolution of the configuration's own network,
in fp32 and bf16, contiguous and channels-last; a (precision, layout)'s peak is the best of them. Every
throughput figure gets ``<figure>_frac_peak`` against the peak of its own precision and layout (training:
contiguous; the bf16 embedding: channels-last in 3D); a figure above its peak is an error (exit 1), never a
"509 %" row. ``embed_bf16_conv_GFLOPs`` is the rate of the encoder's convolutions inside the bf16 embedding
(their FLOPs over their kernels' profiled time).

``--ancestor PATH`` is the root of a local checkout of the ancestor (GlastonburyGroup/ImLatent, MIT-licensed
model code): its BeatGANs autoencoder is imported from that path at run time (never vendored) and timed with the
same procedure in the same process. Without it, the last recorded ancestor figures (``ROWS``) are used.

``--trajectory N`` instead trains N steps in fp32 and N under bf16 autocast from the same initial weights, with
the same batches and the same (t, noise) draws, and prints both loss sequences and their largest relative gap.

Output: one JSON line per configuration (``ours_train_s_per_step``, ``ours_train_bf16_s_per_step``,
``ancestor_train_s_per_step``, ``ratio_train`` and ``ratio_train_bf16`` = ancestor fp32 s/step / ours,
``ours_embed_subj_per_s``, ``ours_embed_bf16_subj_per_s``, ``ancestor_embed_subj_per_s``, ``ratio_embed*``,
GFLOP/s, the peaks, ``*_frac_peak``, the data wait, the profile's top operators), then markdown tables and the
targets. Every time is the median of ``--steps`` repetitions after a warm-up. On CUDA the same rows report
samples/s and peak memory (no peaks).
"""

from __future__ import annotations

import argparse
import copy
import importlib
import importlib.util
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from torch.utils.flop_counter import FlopCounterMode

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from Engineering.data.dataset import H5Samples, SampleSpec, enumerate_samples  # noqa: E402
from Engineering.data.index import Selection, scan  # noqa: E402
from Engineering.data.transforms import axis_perm, normalise_batch  # noqa: E402
from Engineering.Engines.WarpDrives.DiffAE.network import DiffAE, DiffAEConfig  # noqa: E402
from Engineering.Science.diffusion import GaussianDiffusion  # noqa: E402

sys.path.insert(0, str(REPO / "benchmarks"))
import peaks as peak_meter  # noqa: E402

# name: (is3D, input_shape, net_ch, latent, train batch, embed batch,
#        last recorded ancestor s/step, ancestor embedding subjects/s (fp32, 2 threads, this machine kind:
#        benchmarks/results/speed.md, 2026-12-06; the VM drifts by +-30 % between runs, so compare with --ancestor)
ROWS = {
    "2d": (False, (64, 64), 32, 64, 8, 32, 0.832, 297.6),
    "small3d": (True, (16, 64, 64), 16, 32, 4, 4, 9.587, 6.643),
    "published": (True, (50, 128, 128), 32, 128, 1, 2, 80.615, 0.295),
}


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def median_time(fn, steps: int, sync=lambda: None) -> float:
    return interleaved([fn], steps, sync)[0]


def interleaved(fns, steps: int, sync=lambda: None) -> list[float]:
    """Median seconds per call of each fn, the calls alternating (A B A B ...) after one warm-up call each: a
    shared, drifting machine then slows both sides alike, and the ratio stays honest."""
    for fn in fns:  # warm-up (allocator, oneDNN primitive cache, compilation)
        fn()
        sync()
    times = [[] for _ in fns]
    for _ in range(steps):
        for fn, ts in zip(fns, times):
            t0 = time.perf_counter()
            fn()
            sync()
            ts.append(time.perf_counter() - t0)
    return [statistics.median(ts) for ts in times]


def _sync(device: str):
    return torch.cuda.synchronize if device == "cuda" else (lambda: None)


# ---- the ancestor's network, imported from a local checkout ------------------------------------------------------
def ancestor_model(root: Path, is3D: bool, shape, net_ch: int, latent: int):
    """The ancestor's BeatGANsAutoencModel for this configuration, built by its own ``ukbb_autoenc`` template."""
    pkg_dir = Path(root).expanduser() / "Engineering" / "Engines" / "WarpDrives" / "DiffAE"
    if not (pkg_dir / "templates.py").is_file():
        sys.exit(
            f"--ancestor {root}: no Engineering/Engines/WarpDrives/DiffAE/network/templates.py there (give the root of "
            "an ImLatent checkout)"
        )
    name = "_ancestor_diffae"  # its own package name, so it cannot shadow ours (both are called Engineering)
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            name, pkg_dir / "__init__.py", submodule_search_locations=[str(pkg_dir)]
        )
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    templates = importlib.import_module(f"{name}.templates")
    conf = templates.ukbb_autoenc(n_latents=latent)
    conf.is3D, conf.input_shape, conf.in_channels, conf.out_channels, conf.net_ch = is3D, tuple(shape), 1, 1, net_ch
    conf.refresh_values()
    return conf.make_model_conf().make_model()


# ---- one procedure for both networks -------------------------------------------------------------------------------
class Pair:
    """forward(x_t, t, x) -> eps and encode(x) -> z for our DiffAE or the ancestor's model."""

    def __init__(self, net, ancestor: bool):
        self.net, self.ancestor = net, ancestor

    def eps(self, x_t, t, x):
        return self.net(x_t, t, x_start=x).pred if self.ancestor else self.net(x_t, t, self.net.encode(x))

    def encode(self, x):
        return self.net.encode(x)["cond"] if self.ancestor else self.net.encode(x)


def _cohort(path: Path, n: int, shape, is3D: bool) -> None:
    """int16 samples of the configuration's shape in our HDF5 layout: a 3D sample is one (1, S, 1, X, Y) volume
    read as S slices (DS_slice_dim 1); a 2D cohort stores (1, 1, 1, X, Y) frames."""
    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as h5:
        for i in range(n):
            full = (1, shape[0], 1, *shape[1:]) if is3D else (1, 1, 1, *shape)
            ds = h5.create_dataset(f"{1000 + i}/20208/2/primary_cine_0", data=rng.integers(0, 2000, full, np.int16))
            ds.attrs.update({"min_val": 0.0, "max_val": 2000.0})


def loader(path: Path, is3D: bool, shape, batch: int, workers: int) -> DataLoader:
    records = scan(path, Selection())
    spec = SampleSpec(
        is3D=is3D,
        input_shape=tuple(shape),
        perm=axis_perm(0, 1 if is3D else 2),
        split_t=not is3D,
        split_s=not is3D,
        norm_type="minmaxvol",
        norm_range="symmetric",
    )
    ds = H5Samples(path, records, enumerate_samples(records, spec), spec)
    return DataLoader(ds, batch_size=batch, shuffle=True, num_workers=workers, drop_last=True)


def train_step(pair: Pair, batches, device: str, bf16: bool = False, generator: torch.Generator | None = None):
    """One step of the ancestor's procedure on the next batch; the time spent waiting for it is recorded apart.
    ``bf16``: the network under bfloat16 autocast, as ``--ampmode bf16-mixed`` runs it (Lightning's
    MixedPrecision plugin is this autocast); the schedule, the loss and the Adam state stay float32.
    Returns (step, waits, losses): step() also appends its loss."""
    diff = GaussianDiffusion(T=1000)
    ab = torch.as_tensor(diff.alphas_cumprod, dtype=torch.float32, device=device)
    opt = torch.optim.Adam(pair.net.parameters(), lr=1e-4)
    pair.net.train()
    it, waits, losses = iter(batches), [], []

    def step():
        t0 = time.perf_counter()
        batch = next(it)
        x = normalise_batch(batch["inp"].to(device), batch["affine"].to(device))  # as on_after_batch_transfer
        waits.append(time.perf_counter() - t0)
        t = torch.randint(0, 1000, (x.shape[0],), device=device, generator=generator)
        noise = torch.randn(x.shape, device=device, generator=generator)
        a = ab[t].view(-1, *([1] * (x.ndim - 1)))
        x_t = a.sqrt() * x + (1 - a).sqrt() * noise
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
            pred = pair.eps(x_t, t, x)
        loss = F.mse_loss(pred.float(), noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())

    return step, waits, losses


def flop_counts(fn) -> dict[str, float]:
    """FLOPs per operator in one call of fn (torch.utils.flop_counter)."""
    with FlopCounterMode(display=False) as fc:
        fn()
    return {str(op): float(n) for op, n in fc.get_flop_counts()["Global"].items()}


def op_seconds(fn) -> dict[str, float]:
    """Self CPU seconds per operator in one call of fn (torch.profiler)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return {e.key: e.self_cpu_time_total / 1e6 for e in prof.key_averages()}


def top_ops(fn, n: int = 6) -> list[dict]:
    """The operators that take the time of one call of fn."""
    secs = op_seconds(fn)
    total = sum(secs.values()) or 1
    return [
        {"op": op, "s": round(s, 3), "share": round(s / total, 3)}
        for op, s in sorted(secs.items(), key=lambda kv: kv[1], reverse=True)[:n]
    ]


def model_peaks(ours: DiffAE, x_train, x_emb, t0) -> peak_meter.Peaks:
    """fp32 and bf16 peaks of matmul and of this configuration's own convolutions (the UNet and encoder at the
    training batch, the encoder at the embedding batch), contiguous and channels-last."""
    convs = peak_meter.conv_layers(ours, lambda: ours(x_train, t0, ours.encode(x_train)))
    convs += [c for c in peak_meter.conv_layers(ours, lambda: ours.encode(x_emb)) if c not in convs]
    return peak_meter.measure(convs)


def bench_config(name: str, args) -> dict:
    is3D, shape, ch, latent, bs, ebs, anc_step, anc_emb = ROWS[name]
    steps = args.steps or {"published": 3, "small3d": 5, "2d": 9}[name]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    sync = _sync(device)
    torch.manual_seed(0)
    ours = DiffAE(DiffAEConfig(is3D=is3D, in_channels=1, input_shape=shape, latent_dim=latent, net_ch=ch)).to(device)
    # the bf16 run trains its own copy from the same initial weights (no step of the other moves it)
    pairs = [Pair(ours, ancestor=False), Pair(copy.deepcopy(ours), ancestor=False)]
    if args.ancestor:
        torch.manual_seed(0)
        pairs.append(Pair(ancestor_model(Path(args.ancestor), is3D, shape, ch, latent).to(device), ancestor=True))
    out: dict = {
        "config": name,
        "shape": list(shape),
        "net_ch": ch,
        "latent": latent,
        "train_batch": bs,
        "embed_batch": ebs,
        "steps": steps,
        "threads": torch.get_num_threads(),
        "device": device,
        "params_M": round(sum(p.numel() for p in ours.parameters()) / 1e6, 2),
    }
    if args.ancestor:
        out["ancestor_params_M"] = round(sum(p.numel() for p in pairs[2].net.parameters()) / 1e6, 2)
    x_train = torch.randn(bs, 1, *shape, device=device)
    x_emb = torch.randn(ebs, 1, *shape, device=device)
    t0 = torch.zeros(bs, dtype=torch.long, device=device)
    # forward + backward (~2x forward)
    step_flops = 3 * sum(flop_counts(lambda: pairs[0].eps(x_train, t0, x_train)).values())
    with torch.no_grad():
        enc_flops = flop_counts(lambda: ours.encode(x_emb))
    emb_flops = sum(enc_flops.values()) / ebs
    emb_conv_flops = sum(n for op, n in enc_flops.items() if "convolution" in op)
    peaks = model_peaks(ours, x_train, x_emb, t0) if device == "cpu" else None
    if peaks is not None:
        out.update(peaks.summary())

    # training: our DataLoader over an int16 cohort of this shape (default --num_workers 0); ours in fp32, ours
    # under bf16 autocast, the ancestor in fp32, stepping in alternation
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "data.h5"
        _cohort(path, bs * (steps + 1), shape, is3D)
        made = [
            train_step(pair, loader(path, is3D, shape, bs, workers=0), device, bf16=i == 1)
            for i, pair in enumerate(pairs)
        ]
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        secs = interleaved([m[0] for m in made], steps, sync)
        if device == "cuda":
            out["train_peak_mem_GiB"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
            out["train_samples_per_s"] = round(bs / secs[0], 2)
    out["ours_train_s_per_step"] = round(secs[0], 3)
    out["ours_train_bf16_s_per_step"] = round(secs[1], 3)
    out["data_wait_s"] = round(statistics.median(made[0][1][1:]), 5)
    out["data_wait_fraction"] = round(out["data_wait_s"] / secs[0], 5)
    gf = step_flops / secs[0]
    out["ours_train_GFLOPs"] = round(gf / 1e9, 1)
    out["ours_train_bf16_GFLOPs"] = round(step_flops / secs[1] / 1e9, 1)
    del made

    # embedding: fp32 encoders alternating; then our bf16 copy (channels-last in 3D: the layout it runs in)
    for pair in pairs:
        pair.net.eval()
    emb_pairs = [pairs[0], *pairs[2:]]
    with torch.inference_mode():
        esecs = interleaved([lambda p=pair: p.encode(x_emb) for pair in emb_pairs], steps, sync)
        out["ours_embed_subj_per_s"] = round(ebs / esecs[0], 3)
        out["ours_embed_GFLOPs"] = round(emb_flops * ebs / esecs[0] / 1e9, 1)
        fast = ours.fast_encoder(torch.bfloat16, compile=args.compile)
        t_c = time.perf_counter()
        fast(x_emb)
        out["bf16_first_call_s"] = round(time.perf_counter() - t_c, 1)  # includes the compilation with --compile
        bsec = median_time(lambda: fast(x_emb), steps, sync)
        out["ours_embed_bf16_subj_per_s"] = round(ebs / bsec, 3)
        out["ours_embed_bf16_GFLOPs"] = round(emb_flops * ebs / bsec / 1e9, 1)
        out["bf16_compiled"] = bool(args.compile)
        if device == "cpu":
            # the encoder's convolutions alone inside the bf16 embedding: their FLOPs over their kernels' time
            conv_s = sum(s for op, s in op_seconds(lambda: fast(x_emb)).items() if "convolution" in op)
            out["embed_bf16_conv_GFLOPs"] = round(emb_conv_flops / conv_s / 1e9, 1)
        if args.profile and device == "cpu":
            out["top_ops_embed_fp32"] = top_ops(lambda: ours.encode(x_emb))
            out["top_ops_embed_bf16"] = top_ops(lambda: fast(x_emb))
    if args.profile and device == "cpu":
        for key, net, bf16 in (("top_ops_train", pairs[0].net, False), ("top_ops_train_bf16", pairs[1].net, True)):
            net.train()

            def one_step(net=net, bf16=bf16):
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    loss = net(x_train, t0 + 500, net.encode(x_train)).float().square().mean()
                loss.backward()

            out[key] = top_ops(one_step)

    if args.ancestor:
        out["ancestor_train_s_per_step"] = round(secs[2], 3)
        out["ancestor_embed_subj_per_s"] = round(ebs / esecs[1], 3)
        out["ancestor_source"] = "measured"
    else:
        out["ancestor_train_s_per_step"], out["ancestor_embed_subj_per_s"] = anc_step, anc_emb
        out["ancestor_source"] = "recorded"
    out["ratio_train"] = round(out["ancestor_train_s_per_step"] / out["ours_train_s_per_step"], 2)
    out["ratio_train_bf16"] = round(out["ancestor_train_s_per_step"] / out["ours_train_bf16_s_per_step"], 2)
    out["ratio_embed"] = round(out["ours_embed_subj_per_s"] / out["ancestor_embed_subj_per_s"], 2)
    out["ratio_embed_bf16"] = round(out["ours_embed_bf16_subj_per_s"] / out["ancestor_embed_subj_per_s"], 2)
    if peaks is not None:
        out.update(fractions(out, peaks, is3D))
    return out


# every throughput figure, the precision and memory layout it runs in (training under autocast keeps the
# contiguous layout: channels-last measured slower end to end, docs/results/speed.md)
def _layouts(is3D: bool) -> dict:
    return {
        "train": ("ours_train_GFLOPs", "fp32", "contiguous"),
        "train_bf16": ("ours_train_bf16_GFLOPs", "bf16", "contiguous"),
        "embed": ("ours_embed_GFLOPs", "fp32", "contiguous"),
        "embed_bf16": ("ours_embed_bf16_GFLOPs", "bf16", "channels_last" if is3D else "contiguous"),
        "embed_bf16_conv": ("embed_bf16_conv_GFLOPs", "bf16", "channels_last" if is3D else "contiguous"),
    }


def fractions(row: dict, peaks: peak_meter.Peaks, is3D: bool) -> dict:
    """``<figure>_frac_peak`` for every throughput figure, against the peak of its own precision and layout; the
    older keys (fraction of the fp32 matmul and fp32 convolution peaks) are kept for comparison with past runs."""
    out = {}
    for what, (key, precision, layout) in _layouts(is3D).items():
        try:
            out[f"{what}_frac_peak"] = round(peak_meter.fraction(row[key] * 1e9, peaks, precision, layout, what), 3)
        except peak_meter.PeakExceeded as exc:
            out[f"{what}_frac_peak"] = None
            out.setdefault("peak_errors", []).append(str(exc))
    gf = row["ours_train_GFLOPs"] * 1e9
    out["train_frac_matmul_peak"] = round(gf / peaks.matmul["fp32"], 3)
    out["train_frac_conv_peak"] = round(gf / peaks.conv("fp32", "contiguous"), 3)
    out["embed_frac_matmul_peak"] = round(row["ours_embed_GFLOPs"] * 1e9 / peaks.matmul["fp32"], 3)
    out["conv_peak_GFLOPs"] = round(peaks.conv("fp32", "contiguous") / 1e9, 1)
    out["matmul_peak_GFLOPs"] = round(peaks.matmul["fp32"] / 1e9, 1)
    return out


def table(rows: list[dict]) -> str:
    lines = [
        f"threads {rows[0]['threads']}; ours in fp32 and under bf16 autocast (--ampmode bf16-mixed), the "
        "ancestor in fp32; % = fraction of the measured peak of the figure's own precision and layout",
        "",
        "| config | batch (train/embed) | s/step fp32 ours (ancestor) | s/step bf16 ours | train speed-up fp32 / "
        "bf16 | train GFLOP/s fp32 / bf16 (% peak) | data wait | embed subj/s fp32 ours (ancestor) | embed "
        "subj/s bf16 (÷ ancestor fp32) | embed GFLOP/s fp32 / bf16 (% peak) | bf16 embed convolutions "
        "GFLOP/s (% peak) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def pc(r, key):
        v = r.get(key)
        return "peak error" if v is None else f"{100 * v:.0f}%"

    for r in rows:
        lines.append(
            f"| {r['config']} {'x'.join(map(str, r['shape']))} ch{r['net_ch']} L{r['latent']} | {r['train_batch']}/"
            f"{r['embed_batch']} | {r['ours_train_s_per_step']:.2f} ({r['ancestor_train_s_per_step']:.2f}) | "
            f"{r['ours_train_bf16_s_per_step']:.2f} | {r['ratio_train']:.2f}x / {r['ratio_train_bf16']:.2f}x | "
            f"{r['ours_train_GFLOPs']:.0f} ({pc(r, 'train_frac_peak')}) / {r['ours_train_bf16_GFLOPs']:.0f} "
            f"({pc(r, 'train_bf16_frac_peak')}) | {100 * r['data_wait_fraction']:.2f}% | "
            f"{r['ours_embed_subj_per_s']:.3g} ({r['ancestor_embed_subj_per_s']:.3g}) | "
            f"{r['ours_embed_bf16_subj_per_s']:.3g} ({r['ratio_embed_bf16']:.2f}x) | {r['ours_embed_GFLOPs']:.0f} "
            f"({pc(r, 'embed_frac_peak')}) / {r['ours_embed_bf16_GFLOPs']:.0f} ({pc(r, 'embed_bf16_frac_peak')}) | "
            f"{r.get('embed_bf16_conv_GFLOPs', 0):.0f} ({pc(r, 'embed_bf16_conv_frac_peak')}) |"
        )
    lines += [
        "",
        "Peaks measured in the same run (GFLOP/s; convolutions: the configuration's own layers, best of them):",
        "",
        "| config | matmul fp32 / bf16 | conv fp32 contiguous / channels-last | conv bf16 contiguous / "
        "channels-last | layers timed |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        if "matmul_peak_fp32_GFLOPs" in r:
            lines.append(
                f"| {r['config']} | {r['matmul_peak_fp32_GFLOPs']:.0f} / {r['matmul_peak_bf16_GFLOPs']:.0f} | "
                f"{r['conv_peak_fp32_contiguous_GFLOPs']:.0f} / {r['conv_peak_fp32_channels_last_GFLOPs']:.0f}"
                f" | {r['conv_peak_bf16_contiguous_GFLOPs']:.0f} / "
                f"{r['conv_peak_bf16_channels_last_GFLOPs']:.0f} | {r['conv_layers_measured']} |"
            )
    return "\n".join(lines)


def targets(rows: list[dict]) -> str:
    """The speed targets for the published shape: met, or by how much they are missed."""
    pub = next((r for r in rows if r["config"] == "published"), None)
    if pub is None:
        return "targets: run --config published to check them"
    checks = [
        ("bf16 training vs the ancestor's fp32 step", pub["ratio_train_bf16"], 3.0, "x"),
        ("bf16 embedding, subjects/s", pub["ours_embed_bf16_subj_per_s"], 4.0, ""),
        (
            "bf16 embedding convolutions, % of the bf16 channels-last conv peak",
            100 * (pub.get("embed_bf16_conv_frac_peak") or 0),
            50.0,
            "%",
        ),
        ("fp32 training vs the ancestor", pub["ratio_train"], 1.0, "x"),
        ("fp32 embedding vs the ancestor", pub["ratio_embed"], 1.0, "x"),
        ("data wait, % of the step (at most)", 100 * pub["data_wait_fraction"], 5.0, "%"),
    ]
    lines = [f"targets (published shape, ancestor {pub['ancestor_source']}):"]
    for what, got, want, unit in checks:
        ok = got <= want if "at most" in what else got >= want
        miss = "" if ok else f" by {100 * abs(1 - got / want):.0f} %"
        lines.append(f"  {what}: {got:.3g}{unit} (target {want:g}{unit}) {'met' if ok else 'MISSED'}{miss}")
    for key, what in (
        ("top_ops_train", "fp32 training"),
        ("top_ops_train_bf16", "bf16 training"),
        ("top_ops_embed_bf16", "bf16 embedding"),
    ):
        top = ", ".join(f"{o['op'].replace('aten::', '')[:40]} {100 * o['share']:.0f}%" for o in pub.get(key, [])[:4])
        if top:
            lines.append(f"  {what} profile: {top}")
    return "\n".join(lines)


def trajectory(name: str, n_steps: int) -> dict:
    """The loss of n_steps training steps in fp32 and under bf16 autocast, from the same initial weights with the
    same batches and the same (t, noise) draws: how far bf16 training moves from fp32."""
    is3D, shape, ch, latent, bs = ROWS[name][:5]
    torch.manual_seed(0)
    net = DiffAE(DiffAEConfig(is3D=is3D, in_channels=1, input_shape=shape, latent_dim=latent, net_ch=ch))
    losses = {}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "data.h5"
        _cohort(path, bs * n_steps, shape, is3D)
        for bf16 in (False, True):
            torch.manual_seed(1)  # the DataLoader's shuffle
            step, _, got = train_step(
                Pair(copy.deepcopy(net), ancestor=False),
                loader(path, is3D, shape, bs, workers=0),
                "cpu",
                bf16=bf16,
                generator=torch.Generator().manual_seed(2),
            )
            for _ in range(n_steps):
                step()
            losses["bf16" if bf16 else "fp32"] = got
    rel = [abs(b - a) / a for a, b in zip(losses["fp32"], losses["bf16"])]
    return {
        "config": name,
        "trajectory_steps": n_steps,
        "loss_fp32": [round(v, 6) for v in losses["fp32"]],
        "loss_bf16": [round(v, 6) for v in losses["bf16"]],
        "max_rel_diff": round(max(rel), 5),
        "median_rel_diff": round(statistics.median(rel), 5),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="all", choices=[*ROWS, "all"])
    p.add_argument("--ancestor", default="", help="root of a local ImLatent checkout: time its model side by side")
    p.add_argument("--threads", type=int, default=usable_cores(), help="default: the cores this process may use")
    p.add_argument(
        "--steps",
        type=int,
        default=0,
        help="timed repetitions after the warm-up (median); default 3 published, 5 small3d, 9 2d",
    )
    p.add_argument("--compile", action="store_true", help="torch.compile the bf16 encoder (as --compile_model)")
    p.add_argument("--no-profile", dest="profile", action="store_false", help="skip the operator profile")
    p.add_argument(
        "--trajectory",
        type=int,
        default=0,
        metavar="N",
        help="instead of timing: the loss of N steps in fp32 and in bf16 from the same start and draws",
    )
    p.add_argument("--write", default="", help="also write the JSON lines and the table to this file")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    names = list(ROWS) if a.config == "all" else [a.config]
    if a.trajectory:
        rows = [trajectory(n, a.trajectory) for n in names]
        text = "\n".join(json.dumps(r) for r in rows)
        print(text)
        if a.write:
            Path(a.write).write_text(text + "\n")
        return
    rows = []
    for n in names:
        rows.append(bench_config(n, a))
        print(json.dumps(rows[-1]), flush=True)
    text = table(rows) + "\n\n" + targets(rows)
    print("\n" + text)
    if a.write:
        Path(a.write).write_text("\n".join(json.dumps(r) for r in rows) + "\n\n" + text + "\n")
    errors = [e for r in rows for e in r.get("peak_errors", [])]
    if errors:
        sys.exit("peak errors:\n  " + "\n  ".join(errors))


if __name__ == "__main__":
    main()
