"""ultra_cevae: the context-encoding VAE, with the phenotype heads and anti-confounder strategies of :mod:`.heads`.

Zimmerer, Kohl, Petersen, Isensee, Maier-Hein, "Context-encoding Variational Autoencoder for Unsupervised
Anomaly Detection", MIDL 2019 (arXiv 1812.05941, 2018), as used for brain-MRI anomaly detection in StRegA
(Chatterjee et al., "StRegA: Unsupervised anomaly detection in brain MRIs using a compact context-encoding
variational autoencoder", Computers in Biology and Medicine, 2022). The ancestor (GlastonburyGroup/ImLatent)
registers it as ``custom_ultra_cevae``.

One encoder and one decoder serve two branches:

- VAE: x -> q(z | x) -> decoder: KL(q(z | x) || N(0, I)) (``reg_loss``) and the reconstruction term of x
  (``recon_loss``).
- Context encoding (a context encoder, Pathak et al., CVPR 2016, through the VAE): random squares (cubes in 3D) of
  x are replaced by a constant drawn uniformly in [min x, max x] of the batch, per square; the masked image goes
  through the same encoder (a posterior sample) and decoder, and the reconstruction term compares the result
  with the *unmasked* x (``ce_recon_loss``). Per sample, the number of squares is uniform in
  [``min_n_squares``, ``max_n_squares``] and each side uniform in [1, min(spatial size) // ``square_size_factor``]
  (all channels masked alike).

``loss = vae_factor * reg_loss + recon_factor * recon_loss + ce_factor * ce_recon_loss`` (+ the weighted head
terms, each also under its own name: ``pheno_loss``, ``conf_adv_loss``, ``conf_corr_loss``). The ancestor
multiplied recon_loss by vae_factor too (vae_factor * (KL + recon_factor * recon)); with its config_v1 values
(all factors 1) both agree. Reconstruction terms follow pythae's VAE: 0.5 x the per-sample sum of the drive's
element-wise loss (mse, or l1 / custom / masked through ReconTarget), or the sum of BCE.

:meth:`UltraCEVAE.anomaly_map` is Zimmerer et al.'s pixel-wise score "combi", which combines the reconstruction-
based and the density-based score by element-wise multiplication: the squared reconstruction error (x - x_hat)^2
times |d KL(q(z|x) || N(0, I)) / dx|, the magnitude of the gradient, with respect to the input, of the ELBO's
density term (the paper's stated contribution (ii) is to bring the posterior's deviation from the prior, the KL,
into the pixel-wise score; the authors' released MOOD code computes "combi" this way). x_hat decodes the
posterior mean, so the map is deterministic. ``score="grad"`` gives |d(-ELBO)/dx| (the whole ELBO, their "grad") and
``score="rec"`` the squared error alone. Not done here: the authors' code also rescales the gradient map to
[0, 1] and smooths it (an 8-pixel kernel) before the product; apply such post-processing downstream if wanted.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from pydantic.dataclasses import dataclass
from pythae.models import VAE, VAEConfig
from pythae.models.base.base_utils import ModelOutput

from ..spec import ModelSpec, PythaeDriveConfigError
from . import aux
from .heads import CovariateHeads, CovariateHeadsConfig

Tensor = torch.Tensor
Box = tuple[tuple[int, ...], int]  # (start per spatial axis, side)
ANOMALY_SCORES = ("combi", "grad", "rec")


def _config_error(msg: str) -> Exception:
    return PythaeDriveConfigError(msg)


@dataclass
class UltraCEVAEConfig(VAEConfig, CovariateHeadsConfig):
    """The ancestor's ``model§pythae§models§ultra_cevae`` keys (heads' keys: :class:`.heads.CovariateHeadsConfig`).

    ce_factor, recon_factor, vae_factor: weights (>= 0) of the context-encoding reconstruction, the reconstruction
        of x and the KL (module docstring). StRegA: 0.5, 1.0, 0.5.
    square_size_factor: squares have sides up to min(spatial size) / square_size_factor (>= 1).
    min_n_squares, max_n_squares: squares per sample, inclusive range (0 <= min <= max).
    """

    ce_factor: float = 1.0
    recon_factor: float = 1.0
    vae_factor: float = 1.0
    square_size_factor: float = 2.0
    min_n_squares: int = 1
    max_n_squares: int = 3

    def __post_init__(self):
        super().__post_init__()
        for name in ("ce_factor", "recon_factor", "vae_factor"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise _config_error(f"ultra_cevae: {name} must be a finite number >= 0, got {value}")
        if not (math.isfinite(self.square_size_factor) and self.square_size_factor >= 1):
            raise _config_error(
                f"ultra_cevae: square_size_factor must be >= 1 (sides up to the image size over it), "
                f"got {self.square_size_factor}"
            )
        if not 0 <= self.min_n_squares <= self.max_n_squares:
            raise _config_error(
                f"ultra_cevae: need 0 <= min_n_squares <= max_n_squares, got "
                f"{self.min_n_squares} and {self.max_n_squares}"
            )


# ----------------------------------------------------------------------------- squares
def max_square_side(spatial: Sequence[int], square_size_factor: float) -> int:
    """Largest side: min(spatial size) / factor, at least 1 (a square/cube must fit every axis)."""
    return max(1, int(min(spatial) // square_size_factor))


def draw_squares(
    batch: int, spatial: Sequence[int], min_n: int, max_n: int, max_side: int, generator: torch.Generator | None = None
) -> list[list[Box]]:
    """Per sample, a list of (start per axis, side) boxes: count uniform in [min_n, max_n], side in [1, max_side]."""

    def randint(lo: int, hi: int) -> int:  # inclusive
        return int(torch.randint(lo, hi + 1, (1,), generator=generator))

    boxes = []
    for _ in range(batch):
        sample = []
        for _ in range(randint(min_n, max_n)):
            side = randint(1, max_side)
            sample.append((tuple(randint(0, n - side) for n in spatial), side))
        boxes.append(sample)
    return boxes


def square_mask(
    x: Tensor, boxes: list[list[Box]], low: float, high: float, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """(mask, fill), both (B, 1, *spatial): True inside a box; each box filled with its own uniform value in
    [low, high] (a later box overwrites an earlier one where they overlap)."""
    shape = (x.shape[0], 1) + tuple(x.shape[2:])
    mask = torch.zeros(shape, dtype=torch.bool, device=x.device)
    fill = torch.zeros(shape, dtype=x.dtype, device=x.device)
    for b, sample in enumerate(boxes):
        for start, side in sample:
            region = (b, 0) + tuple(slice(s, s + side) for s in start)
            mask[region] = True
            fill[region] = low + (high - low) * float(torch.rand((), generator=generator))
    return mask, fill


# ----------------------------------------------------------------------------- model
class UltraCEVAE(VAE):
    """The context-encoding VAE (module docstring) with the drive's encoder/decoder and the covariate heads."""

    def __init__(self, model_config: UltraCEVAEConfig, encoder=None, decoder=None):
        super().__init__(model_config, encoder=encoder, decoder=decoder)
        self.model_name = "UltraCEVAE"
        self.spatial = tuple(model_config.input_dim[1:])
        self.max_side = max_square_side(self.spatial, model_config.square_size_factor)
        self.covariate_heads = CovariateHeads(model_config)

    def recon_term(self, recon: Tensor, x: Tensor) -> Tensor:
        """Per-sample reconstruction term, as pythae's VAE (on a ReconTarget: the drive's element-wise loss)."""
        b = x.shape[0]
        if self.model_config.reconstruction_loss == "bce":
            return F.binary_cross_entropy(recon.reshape(b, -1), x.reshape(b, -1), reduction="none").sum(-1)
        return 0.5 * F.mse_loss(recon.reshape(b, -1), x.reshape(b, -1), reduction="none").sum(-1)

    @staticmethod
    def kl_term(mu: Tensor, log_var: Tensor) -> Tensor:
        return -0.5 * (1 + log_var - mu.pow(2) - log_var.exp()).sum(-1)

    def mask_input(self, x: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """(masked x, mask): the context-encoding branch's input."""
        cfg = self.model_config
        boxes = draw_squares(x.shape[0], self.spatial, cfg.min_n_squares, cfg.max_n_squares, self.max_side, generator)
        lo, hi = float(x.detach().min()), float(x.detach().max())
        mask, fill = square_mask(x, boxes, lo, hi, generator)
        return torch.where(mask, fill, x), mask

    def _sample(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        enc = self.encoder(x)
        mu, log_var = enc.embedding, enc.log_covariance
        z, _ = self._sample_gauss(mu, torch.exp(0.5 * log_var))
        return mu, log_var, z

    def forward(self, inputs, **kwargs) -> ModelOutput:
        cfg = self.model_config
        x = inputs["data"]
        mu, log_var, z = self._sample(x)
        recon_x = self.decoder(z)["reconstruction"]
        recon = self.recon_term(recon_x, x)
        kl = self.kl_term(mu, log_var)

        x_masked, _ = self.mask_input(x)
        _, _, z_ce = self._sample(x_masked)
        ce = self.recon_term(self.decoder(z_ce)["reconstruction"], x)  # inpaint: compare with the unmasked x

        terms = {"recon_loss": recon.mean(), "reg_loss": kl.mean(), "ce_recon_loss": ce.mean()}
        loss = (
            cfg.vae_factor * terms["reg_loss"]
            + cfg.recon_factor * terms["recon_loss"]
            + cfg.ce_factor * terms["ce_recon_loss"]
        )
        if self.covariate_heads.active:
            head_terms = self.covariate_heads(z, inputs, mu)
            terms.update(head_terms)
            loss = loss + self.covariate_heads.weighted_total(head_terms)
        return ModelOutput(loss=loss, **terms, recon_x=recon_x, z=z)

    def anomaly_map(self, x: Tensor, score: str = "combi") -> Tensor:
        """Pixel-wise anomaly score, same shape as x (module docstring): 'combi' (x - x_hat)^2 * |grad_x KL|,
        'grad' |grad_x (-ELBO)|, 'rec' (x - x_hat)^2.

        Deterministic (posterior mean); works under no_grad and inference_mode (it takes its own gradient). Call it
        in eval mode.
        """
        if score not in ANOMALY_SCORES:
            raise _config_error(f"anomaly score must be one of {', '.join(ANOMALY_SCORES)}, got {score!r}")
        with torch.inference_mode(False), torch.enable_grad():
            x = x.detach().clone().requires_grad_(score != "rec")  # a normal tensor even from inference mode
            enc = self.encoder(x)
            mu, log_var = enc.embedding, enc.log_covariance
            x_hat = self.decoder(mu)["reconstruction"]
            rec = (x - x_hat).detach().pow(2)
            if score == "rec":
                return rec
            # the samples are independent (GroupNorm is per sample), so one gradient of the sum serves them all
            target = self.kl_term(mu, log_var)
            if score == "grad":
                target = target + self.recon_term(x_hat, x)
            (grad,) = torch.autograd.grad(target.sum(), x)
        grad = grad.abs()
        return rec * grad if score == "combi" else grad


SPECS = (
    ModelSpec(
        "ultra_cevae",
        UltraCEVAEConfig,
        UltraCEVAE,
        aux_inputs=aux.HEAD_KEYS,
        data_params=aux.HEAD_PARAMS,
        notes="context-encoding VAE (Zimmerer et al.; StRegA): VAE + inpainting of random squares/cubes with "
        "the same encoder/decoder; anomaly_map(x) = (x - x_hat)^2 * |grad_x KL| (their 'combi'); "
        "phenotype heads and anti-confounder strategies as ultra_vae.",
    ),
)
