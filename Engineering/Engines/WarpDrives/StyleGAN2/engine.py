"""Lightning engine of StyleGAN2 (Karras et al., CVPR 2020) on the HDF5 images: the first stage of the IID
pipeline of Wu et al. (MIDL 2022, seed 000); ``main_restyle`` inverts the generator it trains.

Training (manual optimisation: two optimisers): per batch a discriminator step (logistic loss) and a generator
step (non-saturating loss, style mixing), lazy R1 on the discriminator every ``r1_every`` steps and lazy
path-length regularisation on the generator every ``pl_every`` steps, each scaled by its interval, with Adam's
learning rate and betas corrected for the laziness as in the paper. A generator EMA with a half-life in images
(``ema_kimg``, ramped up over the first images as StyleGAN2-ADA does) is what is tested and what ReStyle
inverts; ``w_avg`` tracks the mean w. Validation: the EMA generator's non-saturating loss against the current
discriminator (``val_loss``: a proxy that moves with training, not a quality score). Test: a sample grid and the
samples' statistics (``Output/samples.png``, ``Output/samples.h5``, ``Output/gan_metrics.json``).

One checkpoint rule for the generator everywhere: the **last** one. Its test and samples use ``last.ckpt`` (never
the "best" checkpoint by ``val_loss``, which does not measure sample quality), as ``main_restyle --generator``
does; ``--load_best`` is refused for this task.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import h5py
import numpy as np
import torch
from pydantic import Field, create_model

from Engineering.config import Config
from Engineering.config.schema import Keys, drive_config, keys_from_dataclass
from Engineering.Engines.latent_engine import LatentEngine
from Engineering.Engines.MainEngine import ImageRun
from Engineering.errors import UserError
from Engineering.io.atomic import atomic_path, write_text
from Engineering.io.checkpoints import load_weights
from Engineering.io.outputs import write_sample_grid
from Engineering.Science.gan_losses import d_logistic_loss, g_nonsaturating_loss, path_length_penalty, r1_penalty
from Engineering.Science.optimisers import make_optimiser, make_scheduler

from .network import Discriminator, Generator, StyleGAN2Config

StyleGAN2Keys = keys_from_dataclass(
    "StyleGAN2Keys",
    StyleGAN2Config,
    exclude=("size", "channels"),
    doc="model§StyleGAN2",
    overrides={"blur_kernel": list[int]},
    r1_gamma=(
        float,
        Field(10.0, ge=0, description="R1 weight gamma (the loss adds gamma/2 * E||grad D(x)||^2; 0 = off)."),
    ),
    r1_every=(int, Field(16, ge=1, description="Lazy R1: every N steps, scaled by N.")),
    pl_weight=(float, Field(2.0, ge=0, description="Path-length regularisation weight (0 = off).")),
    pl_every=(int, Field(4, ge=1, description="Lazy path-length regularisation: every N steps, scaled by N.")),
    pl_batch_shrink=(int, Field(2, ge=1, description="The path-length batch is the batch divided by this.")),
    ema_kimg=(float, Field(10.0, gt=0, description="Half-life of the generator EMA, in thousands of images.")),
    ema_rampup=(
        float,
        Field(
            0.05,
            ge=0,
            description="The half-life is at most this fraction of the images "
            "seen so far (StyleGAN2-ADA's ramp-up; 0 = off).",
        ),
    ),
    sample_every=(
        int,
        Field(
            0,
            ge=0,
            description="Write Samples/step_<n>.png every N training steps (0 = only at the end of each epoch).",
        ),
    ),
    n_samples=(int, Field(16, ge=1, description="Images in each sample grid and in the test's samples.")),
    truncation=(float, Field(1.0, ge=0, le=1, description="Truncation psi of the test's samples (1 = none).")),
)
StyleGANModelKeys = create_model("StyleGANModelKeys", __base__=Keys, StyleGAN2=(StyleGAN2Keys, StyleGAN2Keys()))


def generator_config(cfg: Config, in_channels: int) -> StyleGAN2Config:
    m = cfg.model
    shape = list(m.input_shape)
    if m.is3D or len(shape) != 2 or shape[0] != shape[1]:
        raise UserError(
            f"main_stylegan trains on square 2D images: --input_shape S S (S a power of two from 32 to "
            f"256), got {shape}{' with is3D' if m.is3D else ''}"
        )
    k = m.StyleGAN2
    return drive_config(StyleGAN2Config, k, size=shape[0], channels=in_channels)


class StyleGANEngine(LatentEngine):
    monitor_train = "train_loss_epoch"

    def __init__(self, cfg: Config, in_channels: int):
        super().__init__(cfg, in_channels)
        if str(cfg.run.training_strategy).startswith("deepspeed"):
            raise UserError(
                f"--training_strategy {cfg.run.training_strategy}: adversarial training steps two "
                "optimisers by hand, which Lightning's DeepSpeed strategy does not support; use DDP "
                "(--training_strategy ddp on several devices)"
            )
        self.gen_cfg = generator_config(cfg, in_channels)
        self.k = cfg.model.StyleGAN2
        self.net = Generator(self.gen_cfg)
        self.disc = Discriminator(self.gen_cfg)
        self.init_ema()
        self.automatic_optimization = False
        # state that an exact resume needs: counted steps and images, the path-length running mean
        self.register_buffer("n_steps", torch.zeros((), dtype=torch.long))
        self.register_buffer("n_images", torch.zeros((), dtype=torch.long))
        self.register_buffer("pl_mean", torch.zeros(()))
        self.register_buffer(
            "fixed_z",
            torch.randn(
                self.k.n_samples,
                self.gen_cfg.style_dim,
                generator=torch.Generator().manual_seed(int(cfg.training.seed)),
            ),
        )

    def configure_optimizers(self):
        # Manual optimisation: Lightning neither clips nor steps schedulers here (on_before_optimizer_step and the
        # epoch hooks below do). Lazy regularisation: the paper's correction c = N / (N + 1) of the learning rate
        # (and of Adam's betas) for a network regularised every N steps.
        t = self.cfg.training

        def build(params, every):
            c = every / (every + 1) if every else 1.0
            if t.optimiserID.lower() == "adam":  # the paper's Adam: betas (0, 0.99)
                return torch.optim.Adam(params, lr=self.lr * c, betas=(0.0, 0.99**c))
            return make_optimiser(params, t.optimiserID, self.lr * c)  # --optimiserID: another torch.optim class

        g_every = self.k.pl_every if self.k.pl_weight > 0 else 0
        d_every = self.k.r1_every if self.k.r1_gamma > 0 else 0
        optimisers = [build(self.net.parameters(), g_every), build(self.disc.parameters(), d_every)]
        schedulers = [s for s in (make_scheduler(o, t, self.monitor()) for o in optimisers) if s is not None]
        return (optimisers, schedulers) if schedulers else optimisers

    def on_before_optimizer_step(self, optimizer) -> None:
        # --grad_clip_val, after the AMP unscale (this hook runs inside opt.step()), for every step of both networks
        t = self.cfg.training
        if t.grad_clip_val:
            self.clip_gradients(optimizer, gradient_clip_val=t.grad_clip_val, gradient_clip_algorithm=t.grad_clip_algo)

    def _step_schedulers(self, plateau: bool) -> None:
        """--lr_decay_type: per-epoch schedules (1, 3) at the end of each training epoch; ReduceLROnPlateau (2) on
        the monitored loss once it is known (after validation, or after the epoch without validation)."""
        kind = self.cfg.training.lr_decay_type
        if not kind or (kind == 2) != plateau or self._trainer is None:
            return
        metric = self.trainer.callback_metrics.get(self.monitor())
        scheds = self.lr_schedulers()
        for s in scheds if isinstance(scheds, list) else [scheds]:
            if kind != 2:
                s.step()
            elif metric is not None:
                s.step(metric)

    def _styles(self, b: int) -> torch.Tensor:
        # every rank draws the whole world's codes and keeps its own slice: distinct fakes per rank, while the
        # random streams stay equal on every rank (so rank 0's saved state resumes them all)
        sd, n, r = self.gen_cfg.style_dim, self.world_size(), self.global_rank

        def draw():
            return torch.randn(n * b, sd, device=self.device)[r * b : (r + 1) * b]

        z = draw()
        z2 = draw() if random.random() < self.gen_cfg.mixing_prob else None
        return self.net.styles(z, z2)

    def training_step(self, batch, batch_idx):
        opt_g, opt_d = self.optimizers()
        real = batch["inp"]
        b, k, step = real.shape[0], self.k, int(self.n_steps)
        logs = {}
        # discriminator
        self.disc.requires_grad_(True)
        with torch.no_grad():
            fake = self.net.synthesis(self._styles(b))
        real_logits, fake_logits = self.disc(real), self.disc(fake)
        loss_d = d_logistic_loss(real_logits, fake_logits)
        opt_d.zero_grad()
        self.manual_backward(loss_d)
        opt_d.step()
        logs.update(
            loss_d=loss_d.detach(), real_score=real_logits.detach().mean(), fake_score=fake_logits.detach().mean()
        )
        if k.r1_gamma > 0 and step % k.r1_every == 0:
            x = real.detach().requires_grad_(True)
            r1 = r1_penalty(self.disc(x), x)
            opt_d.zero_grad()
            self.manual_backward(k.r1_gamma / 2 * r1 * k.r1_every)
            opt_d.step()
            logs["r1"] = r1.detach()
        # generator
        self.disc.requires_grad_(False)
        ws = self._styles(b)
        loss_g = g_nonsaturating_loss(self.disc(self.net.synthesis(ws)))
        opt_g.zero_grad()
        self.manual_backward(loss_g)
        opt_g.step()
        self.net.update_w_avg(ws[:, 0])
        logs["loss_g"] = loss_g.detach()
        if k.pl_weight > 0 and step % k.pl_every == 0:
            ws = self._styles(max(1, b // k.pl_batch_shrink))
            pl, new_mean, lengths = path_length_penalty(self.net.synthesis(ws), ws, self.pl_mean)
            opt_g.zero_grad()
            self.manual_backward(k.pl_weight * pl * k.pl_every)
            opt_g.step()
            self.pl_mean.copy_(new_mean.detach())
            logs.update(pl=pl.detach(), pl_length=lengths.detach().mean())
        self.disc.requires_grad_(True)
        self.n_images += b * self.world_size()  # images of every rank: the EMA's half-life counts them all
        self.n_steps += 1
        self.update_ema()
        self.log(
            "train_loss",
            loss_g.detach() + loss_d.detach(),
            on_step=True,
            on_epoch=True,
            prog_bar=True,
            batch_size=b,
            sync_dist=True,
        )
        for name, v in logs.items():
            self.log(f"train_{name}", v, on_step=False, on_epoch=True, batch_size=b, sync_dist=True)
        if k.sample_every and int(self.n_steps) % k.sample_every == 0:
            self.write_samples(f"step_{int(self.n_steps):07d}")

    def world_size(self) -> int:
        return max(1, self.trainer.world_size) if self._trainer is not None else 1

    @torch.no_grad()
    def update_ema(self, step: int | None = None) -> None:
        """beta = 0.5 ** (batch / half-life in images), the half-life ramped up over the first images: StyleGAN2-ADA's
        rule (Karras et al., NeurIPS 2020), whose ramp counts the images seen *before* this batch (its ``cur_nimg``
        at the update), so that the first update copies the generator."""
        b = self.cfg.training.batch_size * self.world_size()
        half = self.k.ema_kimg * 1000
        if self.k.ema_rampup:
            before = max(0.0, float(self.n_images) - b)  # n_images already counts this batch
            half = min(half, before * self.k.ema_rampup)
        beta = 0.5 ** (b / max(half, 1e-8))
        for e, p in zip(self.ema_net.parameters(), self.net.parameters()):
            e.lerp_(p.detach(), 1.0 - beta)
        for e, buf in zip(self.ema_net.buffers(), self.net.buffers()):
            e.copy_(buf)

    def on_train_epoch_end(self) -> None:
        self.write_samples(f"epoch_{self.current_epoch:04d}")
        self._step_schedulers(plateau=False)
        if not self.has_val:
            self._step_schedulers(plateau=True)

    def on_validation_epoch_end(self) -> None:
        if not self.trainer.sanity_checking:
            self._step_schedulers(plateau=True)

    def write_samples(self, name: str) -> None:
        if self._trainer is None or not self.trainer.is_global_zero:
            return
        imgs = self.samples(self.fixed_z)
        write_sample_grid(self.trainer.default_root_dir + f"/Samples/{name}.png", imgs.float().cpu().numpy())

    @torch.no_grad()
    def samples(self, z: torch.Tensor, truncation: float = 1.0) -> torch.Tensor:
        """The EMA generator's images of ``z`` with fixed noise (the same draw every time)."""
        g = self.ema_net
        noise = g.make_noise(len(z), torch.Generator().manual_seed(0))
        return g.synthesis(g.styles(z.to(self.device), truncation=truncation), [n.to(self.device) for n in noise])

    def validation_step(self, batch, batch_idx):
        b = batch["inp"].shape[0]
        z = torch.randn(b, self.gen_cfg.style_dim, generator=torch.Generator().manual_seed(batch_idx)).to(self.device)
        with torch.no_grad():
            loss = g_nonsaturating_loss(self.disc(self.samples(z)))
        self.log("val_loss", loss, on_epoch=True, prog_bar=True, batch_size=b, sync_dist=True)

    def embed(self, x, use_ema: bool) -> torch.Tensor:
        raise UserError("a StyleGAN2 generator has no encoder: main_restyle --generator RUN inverts it")


class GANRun(ImageRun):
    """The image run, with a test phase that writes samples instead of latents."""

    @staticmethod
    def generator_checkpoint(test_ckpt):
        """The rule: the last checkpoint. A "best-*" checkpoint the run chose by val_loss is replaced by the
        ``last.ckpt`` beside it; a checkpoint file the user named (--load_model_4test FILE) is kept."""
        if test_ckpt is not None and Path(test_ckpt).name.startswith("best-"):
            return Path(test_ckpt).with_name("last.ckpt")
        return test_ckpt

    def test(self, trainer, model, dm, out_dir, test_ckpt) -> dict:
        chosen = self.generator_checkpoint(test_ckpt)
        if chosen != test_ckpt:  # every rank: the same weights on all of them
            model.load_run_state(load_weights(model, chosen))
            test_ckpt = chosen
        if not trainer.is_global_zero:
            return {"out_dir": str(out_dir)}
        k = model.k
        z = torch.randn(
            k.n_samples,
            model.gen_cfg.style_dim,
            generator=torch.Generator().manual_seed(int(self.cfg.training.seed) + 1),
        )
        imgs = model.samples(z, truncation=k.truncation).float().cpu().numpy()
        # test images as the model saw them (normalised on transfer, as in training)
        real = dm.on_after_batch_transfer(next(iter(dm.test_dataloader())), 0)["inp"].float().numpy()
        out_dir.mkdir(parents=True, exist_ok=True)
        write_sample_grid(out_dir / "samples.png", imgs)
        with atomic_path(out_dir / "samples.h5") as tmp, h5py.File(tmp, "w") as f:
            f.create_dataset("samples", data=imgs.astype(np.float32))
            f.attrs.update({"truncation": k.truncation, "checkpoint": str(test_ckpt or "final weights")})
        metrics = {
            "n_samples": int(len(imgs)),
            "truncation": k.truncation,
            "sample_mean": float(imgs.mean()),
            "sample_std": float(imgs.std()),
            "test_mean": float(real.mean()),
            "test_std": float(real.std()),
            "finite": bool(np.isfinite(imgs).all()),
            "w_avg_norm": float(model.ema_net.w_avg.norm()),
        }
        write_text(out_dir / "gan_metrics.json", json.dumps(metrics, indent=1))
        print(
            f"outputs written to {out_dir} (samples.png, samples.h5, gan_metrics.json); generator: "
            f"{test_ckpt or 'the final weights'}"
        )
        return {"out_dir": str(out_dir), "gan_metrics": metrics}
