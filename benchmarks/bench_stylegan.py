"""StyleGAN2 generator training and ReStyle inversion throughput (images per second) on this machine.

    python benchmarks/bench_stylegan.py [--sizes 64 256] [--configs F demo] [--batch 4] [--steps 1] [--repeats 3]
        [--channels 1] [--threads N] [--write benchmarks/results/stylegan.md]

Training: one generator step (non-saturating loss) and one discriminator step (logistic loss) per batch, with
lazy R1 every 16 and path-length regularisation every 4 steps, amortised over a 16-step cycle as in training
(their cost per step is reported separately too). Inversion: the ReStyle encoder (IR-SE-50 layers, noise head)
and the frozen generator, one refinement per image, under no_grad. Two sizes: the papers' (StyleGAN2 config F:
style_dim 512, 8 mapping layers, up to 512 feature maps; ReStyle's IR-SE-50 encoder) and the demo tasks' defaults
(style_dim 64, 4 mapping layers, at most 32 feature maps; one IR-SE unit per stage, width 16). Median of
``--repeats`` timings. Run it alone: two cores shared with anything else make every number worse.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from Engineering.Engines.WarpDrives.ReStyle.network import ReStyleConfig, ReStyleNet  # noqa: E402
from Engineering.Engines.WarpDrives.StyleGAN2.network import Discriminator, Generator, StyleGAN2Config  # noqa: E402
from Engineering.Science.gan_losses import d_logistic_loss, g_nonsaturating_loss, path_length_penalty, r1_penalty  # noqa: E402


def _timed(fn, steps: int, repeats: int) -> float:
    """Median seconds per call over ``repeats`` runs of ``steps`` calls (after one warm-up call)."""
    fn()
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(steps):
            fn()
        runs.append((time.perf_counter() - t0) / steps)
    return statistics.median(runs)


def train_costs(cfg: StyleGAN2Config, batch: int, steps: int, repeats: int) -> dict:
    g, d = Generator(cfg), Discriminator(cfg)
    opt_g = torch.optim.Adam(g.parameters(), lr=2e-3, betas=(0.0, 0.99))
    opt_d = torch.optim.Adam(d.parameters(), lr=2e-3, betas=(0.0, 0.99))
    real = torch.randn(batch, cfg.channels, cfg.size, cfg.size)

    def step():
        z = torch.randn(batch, cfg.style_dim)
        loss_d = d_logistic_loss(d(real), d(g(z).detach()))
        opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        opt_d.step()
        loss_g = g_nonsaturating_loss(d(g(torch.randn(batch, cfg.style_dim))))
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()

    def r1():
        x = real.detach().requires_grad_(True)
        opt_d.zero_grad(set_to_none=True)
        (5.0 * r1_penalty(d(x), x)).backward()
        opt_d.step()

    mean = torch.tensor(0.0)

    def pl():
        ws = g.styles(torch.randn(max(1, batch // 2), cfg.style_dim)).detach().requires_grad_(True)
        opt_g.zero_grad(set_to_none=True)
        pen, _, _ = path_length_penalty(g.synthesis(ws), ws, mean)
        (2.0 * pen).backward()
        opt_g.step()

    t_step, t_r1, t_pl = (_timed(f, steps, repeats) for f in (step, r1, pl))
    per_step = t_step + t_r1 / 16 + t_pl / 4
    return {
        "g_params_M": round(sum(p.numel() for p in g.parameters()) / 1e6, 2),
        "d_params_M": round(sum(p.numel() for p in d.parameters()) / 1e6, 2),
        "train_step_s": round(t_step, 4),
        "r1_s": round(t_r1, 4),
        "pl_s": round(t_pl, 4),
        "train_img_per_s": round(batch / per_step, 2),
    }


def inversion_cost(cfg: StyleGAN2Config, enc: ReStyleConfig, batch: int, steps: int, repeats: int) -> dict:
    net = ReStyleNet(enc, Generator(cfg)).eval()
    x = torch.randn(batch, cfg.channels, cfg.size, cfg.size)

    def invert():
        with torch.no_grad():
            net.invert(x)

    t = _timed(invert, steps, repeats)
    return {
        "encoder_params_M": round(sum(p.numel() for p in net.encoder.parameters()) / 1e6, 2),
        "invert_img_per_s": round(batch / t, 2),
    }


# (generator, encoder) keyword sets: the papers' sizes (StyleGAN2Config's and ReStyleConfig's defaults) and
# the demo tasks' (Configs/config_stylegan.yaml, Configs/config_restyle.yaml)
CONFIGS = {
    "F": ({}, {}),
    "demo": ({"style_dim": 64, "n_mlp": 4, "channel_max": 32}, {"blocks": (1, 1, 1, 1), "width": 16}),
}


def markdown(rows: list[dict]) -> str:
    head = (
        "| config | size | G / D / encoder params (M) | train step (s, batch {b}) | R1 / PL step (s) "
        "| **train img/s** | **inversion img/s** |"
    ).format(b=rows[0]["batch"])
    lines = [head, "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['config']} | {r['size']} | {r['g_params_M']} / {r['d_params_M']} / "
            f"{r['encoder_params_M']} | {r['train_step_s']} | {r['r1_s']} / {r['pl_s']} "
            f"| {r['train_img_per_s']} | {r['invert_img_per_s']} |"
        )
    r = rows[0]
    lines.append(
        f"\n{r['channels']} image channel(s), {r['threads']} CPU threads, median of {r['repeats']} timings; "
        "train img/s counts R1 every 16 and path length every 4 steps. "
        "Regenerate: `python benchmarks/bench_stylegan.py --write benchmarks/results/stylegan.md`."
    )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[64, 256])
    p.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--steps", type=int, default=1, help="timed calls per repeat")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--channels", type=int, default=1)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--write", default="", help="also write the markdown table to this file")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rows = []
    for name in args.configs:
        for size in args.sizes:
            g_kw, enc_kw = CONFIGS[name]
            cfg = StyleGAN2Config(size=size, channels=args.channels, **g_kw)
            row = {
                "config": name,
                "size": size,
                "channels": args.channels,
                "batch": args.batch,
                "threads": torch.get_num_threads(),
                "repeats": args.repeats,
                **train_costs(cfg, args.batch, args.steps, args.repeats),
                **inversion_cost(cfg, ReStyleConfig(**enc_kw), args.batch, args.steps, args.repeats),
            }
            print(json.dumps(row), flush=True)
            rows.append(row)
    table = markdown(rows)
    print(table)
    if args.write:
        Path(args.write).write_text(table + "\n")


if __name__ == "__main__":
    main()
