"""Lightning engine of the Diffusion Autoencoder (Preechakul et al., CVPR 2022).

Training: epsilon-MSE at random timesteps, the semantic encoder trained end to
end through the conditional UNet. Validation is cheap and deterministic: the
same epsilon-MSE at fixed timesteps and noise per batch (``val_loss``), plus
every ``eval§val_ssim_every`` epochs the reconstruction SSIM of a few fixed
samples. Test: z_sem from the (EMA) encoder; unless ``--test_emb_only``,
deterministic DDIM inversion to x_T and rendering back.
"""

from __future__ import annotations

from typing import Literal, Optional, Union

import torch
from pydantic import Field, create_model

from Engineering.config import Config
from Engineering.config.flags import Flag
from Engineering.config.schema import Keys, drive_config, keys_from_dataclass
from Engineering.data.transforms import normalised_range
from Engineering.Engines.latent_engine import LatentEngine
from Engineering.errors import UserError
from Engineering.Science.diffusion import GaussianDiffusion
from Engineering.Science.metrics import recon_metrics

from .network import DiffAE, DiffAEConfig

# model§DiffAE: the drive's architecture (its config dataclass: one home per default) + the diffusion keys
DiffAEKeys = keys_from_dataclass(
    "DiffAEKeys",
    DiffAEConfig,
    exclude=("is3D", "in_channels", "input_shape", "latent_dim"),
    doc="model§DiffAE",
    T=(int, Field(1000, gt=0, description="Diffusion steps of training (linear betas, epsilon prediction).")),
    # the step counts are checked against T by the diffusion (one message naming all four)
    T_eval=(int, Field(10, description="DDIM steps of the validation renders (val_ssim).")),
    T_inv=(Optional[int], Field(None, description="DDIM steps of the test inversion to x_T (null = T_eval).")),
    T_step=(Optional[int], Field(None, description="DDIM steps of the test rendering (null = T_eval).")),
    spacing=(
        Literal["ddim", "even"],
        Field(
            "ddim",
            description="Which timesteps an N-step DDIM visits: ddim = DiffAE's "
            "and the ancestor's range(0, T, k) with the smallest "
            "stride k giving N steps (20 steps: 0, 50, ..., 950); "
            "even = N rounded points from 0 to T-1.",
        ),
    ),
    loss_weighting=(
        Literal["uniform", "p2", "truncated_snr"],
        Field(
            "uniform",
            description="Training loss over timesteps: uniform = DiffAE's epsilon MSE; p2 = "
            "P2 weighting 1/(p2_k + SNR_t)^p2_gamma (Choi et al. 2022, mean 1), "
            "more weight on the noisy steps where the content must come from "
            "z_sem; truncated_snr = max(1, 1/SNR_t) (Salimans & Ho 2022: the "
            "x0 error with weight max(SNR_t, 1)). Validation reports the "
            "plain MSE either way.",
        ),
    ),
    p2_gamma=(float, Field(1.0, ge=0, description="P2 weighting exponent (0 = uniform).")),
    p2_k=(float, Field(1.0, gt=0, description="P2 weighting offset k.")),
    clip_x0=(
        Union[Literal["auto", "none"], None, tuple[float, float]],
        Field(
            "auto",
            description="Clamp the predicted x0 while inverting and rendering (DiffAE's clip_denoised): "
            "auto = the normalised data range ([-1, 1] with --norm_range symmetric or "
            "the fixed z-score after a min-max prenorm, [0, 1] with unit; off for a "
            "per-sample z-score or none), null = off, or [lo, hi].",
        ),
    ),
)
DiffAEModelKeys = create_model("DiffAEModelKeys", __base__=Keys, DiffAE=(DiffAEKeys, DiffAEKeys()))


class DiffAEEvalKeys(Keys):
    """eval (main_diffAE)"""

    val_ssim_every: int = Field(
        1, ge=0, description="Reconstruction SSIM of a few fixed validation subjects every N epochs (0 = never)."
    )
    val_ssim_subjects: int = Field(2, gt=0, description="Validation subjects of that SSIM.")
    embed_precision: Literal["32", "bf16"] = Field(
        "32",
        description="Precision of test-time embedding: bf16 runs a bfloat16 (3D: channels-last) copy of the "
        "encoder's trunk with its head in float32, 1.3-1.8x faster than fp32 on an AVX512-BF16 CPU "
        "(attention-bound at the published 3D shape; docs/results/speed.md, with the measured "
        "tolerance against fp32); with --compile_model that copy is torch.compiled.",
    )


def clip_range(cfg: Config) -> tuple[float, float] | None:
    """Where inversion and rendering clamp their x0 prediction: ``model§DiffAE§clip_x0`` auto = the range
    the normalisation maps into ([-1, 1] for the symmetric min-max family and the ancestor's fixed
    z-score after min-max, [0, 1] for unit min-max; none for a per-sample z-score or none), as DiffAE
    clips to [-1, 1] in both (clip_denoised)."""
    value = cfg.model.DiffAE.clip_x0
    if value == "auto":
        d = cfg.data
        return normalised_range(d.norm_type, d.prenorm, d.zscore_mean, d.zscore_std, d.norm_range)
    if value in (None, "none"):
        return None
    return float(value[0]), float(value[1])


def diffae_config(cfg: Config, in_channels: int) -> DiffAEConfig:
    """The WarpDrive config from model§latent_dim, model§input_shape, model§is3D and model§DiffAE§*."""
    return drive_config(
        DiffAEConfig,
        cfg.model.DiffAE,
        is3D=cfg.model.is3D,
        in_channels=in_channels,
        input_shape=tuple(cfg.model.input_shape),
        latent_dim=cfg.model.latent_dim,
    )


class DiffAEEngine(LatentEngine):
    def __init__(self, cfg: Config, in_channels: int):
        super().__init__(cfg, in_channels)
        self.drive_cfg = diffae_config(cfg, in_channels)
        self.net = DiffAE(self.drive_cfg)
        self.init_ema()
        keys = cfg.model.DiffAE
        self.T = keys.T
        t_eval = keys.T_eval
        self.T_inv = t_eval if cfg.eval.test_with_TEval or keys.T_inv is None else keys.T_inv
        self.T_step = t_eval if cfg.eval.test_with_TEval or keys.T_step is None else keys.T_step
        self.T_eval = t_eval
        try:
            self.diffusion = GaussianDiffusion(
                T=self.T, spacing=keys.spacing, weighting=keys.loss_weighting, p2_gamma=keys.p2_gamma, p2_k=keys.p2_k
            )
            for name in ("T_eval", "T_inv", "T_step"):
                self.diffusion.respace(getattr(self, name))
        except ValueError as exc:
            raise UserError(
                f"model§DiffAE (T={self.T}, T_eval={self.T_eval}, T_inv={self.T_inv}, T_step={self.T_step}): {exc}"
            ) from None
        self.clip = clip_range(cfg)
        self.seed = int(cfg.training.seed)

    def checkpointable(self) -> list:
        return [self.net, self.net.encoder]  # the EMA copy only runs without gradients

    def _gen(self, *key: int) -> torch.Generator:
        """Draws that are a pure function of (seed, key): exact resume without replaying RNGs."""
        g = torch.Generator(device=self.device)
        g.manual_seed(hash((self.seed,) + key) & 0x7FFFFFFFFFFFFFFF)
        return g

    def _draw(self, x: torch.Tensor, g: torch.Generator):
        t = torch.randint(0, self.T, (x.shape[0],), generator=g, device=self.device)
        noise = torch.randn(x.shape, generator=g, device=self.device, dtype=x.dtype)
        return t, noise

    def _loss(self, model, x: torch.Tensor, g: torch.Generator, weighted: bool = True) -> torch.Tensor:
        # the diffusion schedule (noise, x_t, the loss) at fp32 or wider, whatever DeepSpeed's bf16 made of the
        # batch; the network casts x_t to its own dtype and its prediction back
        x = x.to(torch.promote_types(x.dtype, torch.float32))
        t, noise = self._draw(x, g)
        return self.diffusion.loss(model, x, model.encode(x), t, noise, weighted=weighted)

    def training_step(self, batch, batch_idx):
        rank = self.global_rank
        loss = self._loss(self.net, batch["inp"], self._gen(1, self.global_step, batch_idx, rank))
        self.log(
            "train_loss",
            loss,
            on_step=True,
            on_epoch=True,
            prog_bar=True,
            batch_size=batch["inp"].shape[0],
            sync_dist=True,
        )
        return loss

    def _eval_net(self):
        return self.ema_net if self.cfg.eval.test_ema else self.net

    @torch.no_grad()
    def validation_step(self, batch, batch_idx):
        x = batch["inp"]
        net = self._eval_net()
        loss = self._loss(net, x, self._gen(2, batch_idx), weighted=False)
        self.log("val_loss", loss, on_epoch=True, prog_bar=True, batch_size=x.shape[0], sync_dist=True)
        every = self.cfg.eval.val_ssim_every
        if every and batch_idx == 0 and (self.current_epoch + 1) % every == 0 and not self.trainer.sanity_checking:
            n = self.cfg.eval.val_ssim_subjects
            xs = x[:n]
            z = net.encode(xs)
            rec = self._render(net, xs, z, self.T_eval, self.T_eval)
            ssim = torch.tensor([r["SSIM"] for i in range(len(xs)) for r in recon_metrics(xs[i].cpu(), rec[i].cpu())])
            self.log("val_ssim", ssim.nanmean().to(self.device), on_epoch=True, batch_size=len(xs), sync_dist=True)

    def _invert_render(self, net, x, z, t_inv: int, t_step: int) -> tuple[torch.Tensor, torch.Tensor]:
        x_T = self.diffusion.ddim_invert(net, x, z, t_inv, clip=self.clip)
        return self.diffusion.ddim_sample(net, x_T, z, t_step, clip=self.clip), x_T

    def _render(self, net, x, z, t_inv: int, t_step: int) -> torch.Tensor:
        return self._invert_render(net, x, z, t_inv, t_step)[0]

    def on_test_start(self) -> None:
        self._fast_encoders = {}  # built from the weights this test loaded

    def embed(self, x, use_ema: bool) -> torch.Tensor:
        net = self.ema_net if use_ema else self.net
        # the bfloat16 copy is a test-phase setting: during fit (validation, image grids) the weights move under it
        trainer = getattr(self, "_trainer", None)
        fitting = trainer is not None and trainer.state.fn == "fit"
        if self.cfg.eval.embed_precision == "bf16" and not fitting:
            fast = getattr(self, "_fast_encoders", None)
            if fast is None:
                fast = self._fast_encoders = {}
            if use_ema not in fast:
                fast[use_ema] = net.fast_encoder(torch.bfloat16, compile=bool(self.cfg.run.compile_model))
            return fast[use_ema](x)
        return net.encode(x)

    def reconstruct(self, x, z, use_ema: bool) -> torch.Tensor:
        return self._render(self.ema_net if use_ema else self.net, x, z, self.T_inv, self.T_step)

    def render(self, x, codes, use_ema: bool) -> list[torch.Tensor]:
        """x's own x_T (inverted with its own z), rendered with each of ``codes``."""
        net = self.ema_net if use_ema else self.net
        x_T = self.diffusion.ddim_invert(net, x, self.embed(x, use_ema), self.T_inv, clip=self.clip)
        return [self.diffusion.ddim_sample(net, x_T, z, self.T_step, clip=self.clip) for z in codes]

    def reconstruct_with_code(self, x, z, use_ema: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """The reconstruction and DiffAE's stochastic code x_T (DDIM inversion, the model's input units)."""
        return self._invert_render(self.ema_net if use_ema else self.net, x, z, self.T_inv, self.T_step)


DIFFAE_FLAGS = (
    Flag(
        "embed_precision",
        ("eval", "embed_precision"),
        "str",
        "32",
        "Test-time embedding precision: bf16 = a bfloat16 copy of the encoder's trunk, head in float32 (1.3-1.8x "
        "faster than fp32 on an AVX512-BF16 CPU; latents within 0.3% of fp32, docs/results/speed.md).",
        "Test",
        choices=("32", "bf16"),
    ),
    Flag(
        "test_with_TEval",
        ("eval", "test_with_TEval"),
        "bool",
        False,
        "Use T_eval steps for inversion and rendering too (T_inv = T_step = T_eval).",
        "Test",
    ),
)
