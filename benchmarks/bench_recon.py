"""pythae WarpDrive speed: training steps/s and embedding throughput at a documented 3D size.

python benchmarks/bench_recon.py [--models vae,beta_vae,vqvae,factor_vae] [--shape 16,64,64] [--batch 4] [--steps 5]

One step = the drive's forward on a batch, backward of every optimiser's loss
and each optimiser's step (the engine's manual-optimisation path for
multi-optimiser models).
"""

from __future__ import annotations

import argparse
import time

import torch

from Engineering.Engines.WarpDrives.pythaeDrive.network import PythaeDrive, PythaeDriveConfig


def bench(name: str, shape: tuple[int, ...], batch: int, steps: int) -> dict:
    torch.manual_seed(0)
    drive = PythaeDrive(
        PythaeDriveConfig(
            model=name, is3D=len(shape) == 3, in_channels=1, input_shape=shape, latent_dim=32, n_features=16
        )
    )
    opts = [torch.optim.Adam(s.param_groups, lr=1e-4) for s in drive.optimiser_specs()]
    x = torch.rand(batch, 1, *shape)

    def step():
        out = drive({"inp": x}, epoch=0, dataset_size=1000)
        if drive.is_multi_optimiser:
            for s in drive.losses_for_step(out):
                if s.loss is not None:
                    s.loss.backward(inputs=s.params, retain_graph=s.retain_graph)
        else:
            out.loss.backward()
        for o in opts:
            o.step()
            o.zero_grad(set_to_none=True)

    step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    s_step = (time.perf_counter() - t0) / steps
    drive.eval()
    xe = torch.rand(16, 1, *shape)
    with torch.no_grad():
        drive.embed(xe)
        t0 = time.perf_counter()
        for _ in range(3):
            drive.embed(xe)
        emb = 3 * len(xe) / (time.perf_counter() - t0)
    return {"s_step": s_step, "emb": emb, "params": sum(p.numel() for p in drive.parameters()) / 1e6}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="vae,beta_vae,vqvae,factor_vae,aae")
    p.add_argument("--shape", default="16,64,64", help="S,X,Y (3D) or X,Y (2D)")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--steps", type=int, default=5)
    a = p.parse_args()
    shape = tuple(int(v) for v in a.shape.split(","))
    print(
        f"threads {torch.get_num_threads()}; input 1x{'x'.join(map(str, shape))}, batch {a.batch}, latent 32, "
        "n_features 16, conv family\n"
    )
    print("| model | params (M) | s/step | steps/s | embed samples/s |")
    print("|---|---|---|---|---|")
    for name in a.models.split(","):
        r = bench(name, shape, a.batch, a.steps)
        print(f"| {name} | {r['params']:.2f} | {r['s_step']:.3f} | {1 / r['s_step']:.2f} | {r['emb']:.1f} |")


if __name__ == "__main__":
    main()
