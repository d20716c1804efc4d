"""Identifiable VAEs (``ivaes``): iVAE, IDVAE and CI-iVAE on the pythae drive, selected by ``ivae_mode``.

- iVAE: Khemakhem, Kingma, Monti, Hyvärinen, "Variational Autoencoders and Nonlinear ICA: A Unifying
  Framework", AISTATS 2020. A conditional prior p(z | u) = N(mu(u), diag sigma^2(u)) on an auxiliary
  variable u makes the latent identifiable. As in Kim et al. (below), the posterior q(z | x, u) is the product
  of the image encoder q(z | x) and the label prior p(z | u) (a precision-weighted Gaussian), and the ELBO is
  E_q(z|x,u)[log p(x | z)] - beta * KL(q(z | x, u) || p(z | u)).
- IDVAE: Mita, Filippone, Michiardi, "An Identifiable Double VAE For Disentangled Representations", ICML 2021.
  The conditional prior is itself the encoder of a second VAE on u: a label decoder p(u | z) (MLP,
  ``hidden_nodes_label_decoder``) and a N(0, I) prior add E[log p(u | z)] - beta * KL(p(z | u) || N(0, I)).
  (The ancestor passed log-variance 1, i.e. N(0, e I), as that prior; here it is the standard normal.)
- CI-iVAE: Kim, Liu, Wei, "Covariate-informed Representation Learning to Prevent Posterior Collapse of iVAE",
  AISTATS 2023 (arXiv 2202.04206). The variational distribution is the mixture
  q_a = a q(z | x) + (1 - a) q(z | x, u); per sample, the bound is maximised over a on the grid
  {alpha_step, 2 alpha_step, ...} inside (0, 1), as in the authors' code. (The ancestor added a = 0 and a = 1;
  at a = 0 the encoder q(z | x) gets no gradient of its own and drifts: on 12x12 blobs with beta 1 its KL to the
  label prior grew 7 -> 149 in 15 Adam steps, which the open grid prevents.) The mixture's beta-ELBO decomposes
  exactly as
  a ELBO_enc + (1 - a) ELBO_iVAE + beta [a KL(q(z|x) || q_a) + (1 - a) KL(q(z|x,u) || q_a)]
  (the entropy of a mixture exceeds the mixture of entropies by these skew KL divergences), where ELBO_enc is
  the ELBO of q(z | x) against the label prior. The skew KLs have no closed form: ``M`` Monte-Carlo samples
  from each component estimate them (clamped at 0, as a KL is). Two deliberate differences from the authors'
  released code (and the ancestor's copy of it): there the skew terms are *subtracted* from the bound and not
  weighted by beta; the sum above is the mixture's ELBO, which is what makes CI-iVAE's bound at least as
  tight as the convex combination of the two ELBOs.

Output keys (each a per-batch mean; every key ending in "loss" is logged): ``loss`` (the minimised objective),
``recon_loss`` (reconstruction term of the posterior sample) and ``reg_loss`` (KL(q(z|x,u) || p(z|u)),
unweighted), so that for iVAE ``loss = recon_loss + beta * reg_loss``; IDVAE adds ``label_recon_loss`` and
``label_reg_loss`` (``loss`` = iVAE's + label_recon_loss + beta * label_reg_loss); CI-iVAE adds
``encoder_recon_loss`` / ``encoder_reg_loss`` (the same terms for q(z | x)), ``skew_kl_loss`` (the
a-weighted skew KLs at the chosen a) and ``alpha`` (mean chosen a; not a loss).

Reconstruction term: the drive's element-wise loss (mse / bce, or l1 / custom / masked through ReconTarget),
reduced per sample by its mean over voxels when ``orig_recon_loss`` (the CI-iVAE code's Gaussian term, the
ancestor's default) or as pythae's VAE does otherwise (0.5 x the sum for mse-type losses, the sum for bce).
The ancestor ignored ``reconstruction_loss`` under ``orig_recon_loss`` (always MSE); here it is honoured.

u is the batch entry ``aux_u`` (custom_models/aux.py: the confounders, one-hot where categorical), of width
``n_aux`` (set by the engine from the data). ``embed()`` is the drive's default: the mean of q(z | x), which
needs no u.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic.dataclasses import dataclass
from pythae.models import VAE, VAEConfig
from pythae.models.base.base_utils import ModelOutput

from ..spec import ModelSpec, PythaeDriveConfigError
from .aux import AUX_U

Tensor = torch.Tensor
MODES = ("iVAE", "IDVAE", "CI-iVAE")
_LOG_2PI = math.log(2 * math.pi)


def _config_error(msg: str) -> Exception:
    return PythaeDriveConfigError(msg)


# ----------------------------------------------------------------------------- Gaussian algebra
def gaussian_kl(mean1: Tensor, log_var1: Tensor, mean2: Tensor, log_var2: Tensor) -> Tensor:
    """KL(N(mean1, diag e^log_var1) || N(mean2, diag e^log_var2)), summed over the last axis."""
    return 0.5 * (log_var2 - log_var1 + (log_var1.exp() + (mean1 - mean2) ** 2) / log_var2.exp() - 1).sum(-1)


def product_of_gaussians(mean1: Tensor, log_var1: Tensor, mean2: Tensor, log_var2: Tensor) -> tuple[Tensor, Tensor]:
    """The normalised product N(mean1, var1) N(mean2, var2): precisions add, means are precision-weighted."""
    log_var = -torch.logaddexp(-log_var1, -log_var2)
    w1 = torch.sigmoid(log_var2 - log_var1)  # = var2 / (var1 + var2), stable for extreme variances
    return w1 * mean1 + (1 - w1) * mean2, log_var


def log_normal(z: Tensor, mean: Tensor, log_var: Tensor, dim: int = 1) -> Tensor:
    """log N(z; mean, diag e^log_var), summed over ``dim``."""
    return -0.5 * (_LOG_2PI + log_var + (z - mean) ** 2 / log_var.exp()).sum(dim)


def skew_kls(
    mu_x: Tensor, lv_x: Tensor, mu_p: Tensor, lv_p: Tensor, alphas: Tensor, eps_x: Tensor, eps_p: Tensor
) -> tuple[Tensor, Tensor]:
    """Monte-Carlo KL(q_x || q_a) and KL(q_p || q_a), each (B, K), for the mixtures q_a = a q_x + (1 - a) q_p.

    q_x = N(mu_x, e^lv_x) and q_p = N(mu_p, e^lv_p) are (B, L) diagonal Gaussians; eps_x, eps_p (B, L, M) standard
    normal draws give M samples of each; alphas (K,) in [0, 1]. Estimates are clamped at 0 (a KL is >= 0).
    """
    zx = mu_x[..., None] + (0.5 * lv_x).exp()[..., None] * eps_x
    zp = mu_p[..., None] + (0.5 * lv_p).exp()[..., None] * eps_p
    qx_zx, qp_zx = log_normal(zx, mu_x[..., None], lv_x[..., None]), log_normal(zx, mu_p[..., None], lv_p[..., None])
    qx_zp, qp_zp = log_normal(zp, mu_x[..., None], lv_x[..., None]), log_normal(zp, mu_p[..., None], lv_p[..., None])
    log_a, log_1ma = torch.log(alphas), torch.log1p(-alphas)  # -inf at the ends: that component drops out

    def log_mix(qx, qp):  # log q_a at the samples, (B, M, K)
        return torch.logaddexp(log_a + qx[..., None], log_1ma + qp[..., None])

    kl_x = (qx_zx[..., None] - log_mix(qx_zx, qp_zx)).mean(1).clamp_min(0)
    kl_p = (qp_zp[..., None] - log_mix(qx_zp, qp_zp)).mean(1).clamp_min(0)
    return kl_x, kl_p


# ----------------------------------------------------------------------------- config
@dataclass
class IVAEsConfig(VAEConfig):
    """Configuration of ``ivaes`` (the ancestor's ``model§pythae§models§ivaes`` keys, plus ``input_jitter``).

    ivae_mode: 'iVAE', 'IDVAE' or 'CI-iVAE' (case-insensitive).
    beta: weight of the KL terms (and of CI-iVAE's skew KLs, which belong to the same entropy term).
    alpha_step: CI-iVAE's grid step for the mixture weight a in [0, 1]; 0 < alpha_step < 1.
    hidden_nodes_label_prior: width of the two hidden layers of the label prior MLP u -> (mean, log variance).
    hidden_nodes_label_decoder: width of IDVAE's label decoder z -> u.
    M: Monte-Carlo samples per component for CI-iVAE's skew KLs.
    (alpha_step and M apply to CI-iVAE, hidden_nodes_label_decoder to IDVAE: another mode refuses a
    non-default value.)
    predict_reparameterised: must be False: embed() is the posterior mean of q(z | x) (deterministic); a
        sampled embedding would make emb.h5 change from run to run.
    orig_recon_loss: per-sample mean of the element-wise loss (True) or pythae's VAE sum (False).
    input_jitter: std of the Gaussian noise added to the encoder's input in training (the CI-iVAE code's
        1e-2, against posterior collapse); 0 disables it.
    aggressive_post, kl_annealing: the ancestor's placeholders (never implemented there); only False.
    n_aux: width of u; set by the engine from the data (``ModelSpec.data_params``).
    """

    ivae_mode: str = "CI-iVAE"
    beta: float = 0.001
    alpha_step: float = 0.025
    hidden_nodes_label_prior: int = 256
    hidden_nodes_label_decoder: int = 256
    M: int = 100
    predict_reparameterised: bool = False
    orig_recon_loss: bool = True
    input_jitter: float = 0.01
    aggressive_post: bool = False
    kl_annealing: bool = False
    n_aux: int = 0

    def __post_init__(self):
        super().__post_init__()
        modes = {m.lower(): m for m in MODES}
        mode = modes.get(str(self.ivae_mode).strip().lower().replace("_", "-"))
        if mode is None:
            raise _config_error(f"ivaes: ivae_mode must be one of {', '.join(MODES)}, got {self.ivae_mode!r}")
        self.ivae_mode = mode
        if not 0 < self.alpha_step < 1:
            raise _config_error(f"ivaes: alpha_step must be in (0, 1), got {self.alpha_step}")
        if self.beta < 0 or not math.isfinite(self.beta):
            raise _config_error(f"ivaes: beta must be a finite number >= 0, got {self.beta}")
        if self.input_jitter < 0:
            raise _config_error(f"ivaes: input_jitter must be >= 0, got {self.input_jitter}")
        for name in ("hidden_nodes_label_prior", "hidden_nodes_label_decoder", "M"):
            if getattr(self, name) < 1:
                raise _config_error(f"ivaes: {name} must be a positive integer, got {getattr(self, name)}")
        if self.n_aux < 0:
            raise _config_error(f"ivaes: n_aux must be >= 0, got {self.n_aux}")
        # a key the chosen mode does not read may keep its default (the ancestor's YAML lists them all); a value
        # set to something else would silently do nothing
        for name, modes_using in (
            ("alpha_step", ("CI-iVAE",)),
            ("M", ("CI-iVAE",)),
            ("hidden_nodes_label_decoder", ("IDVAE",)),
        ):
            if mode not in modes_using and getattr(self, name) != _FIELD_DEFAULTS[name]:
                raise _config_error(f"ivaes: {name} applies to ivae_mode {' / '.join(modes_using)} only, not {mode}")
        if self.predict_reparameterised:
            raise _config_error(
                "ivaes: predict_reparameterised=true is not supported: embed() returns the "
                "posterior mean of q(z|x) (deterministic); set it to false"
            )
        for name in ("aggressive_post", "kl_annealing"):
            if getattr(self, name):
                raise _config_error(f"ivaes: {name}=true is not implemented (nor was it in the ancestor)")


_FIELD_DEFAULTS = {"alpha_step": 0.025, "M": 100, "hidden_nodes_label_decoder": 256}


# ----------------------------------------------------------------------------- networks
class _MLP(nn.Sequential):
    """in -> hidden -> hidden -> out, LeakyReLU(0.2) (the CI-iVAE networks' shape)."""

    def __init__(self, n_in: int, hidden: int, n_out: int):
        super().__init__(
            nn.Linear(n_in, hidden),
            nn.LeakyReLU(0.2),
            nn.Linear(hidden, hidden),
            nn.LeakyReLU(0.2),
            nn.Linear(hidden, n_out),
        )


class LabelPrior(nn.Module):
    """p(z | u) = N(mean(u), diag exp(log_var(u)))."""

    def __init__(self, n_aux: int, hidden: int, latent_dim: int):
        super().__init__()
        self.net = _MLP(n_aux, hidden, 2 * latent_dim)

    def forward(self, u: Tensor) -> tuple[Tensor, Tensor]:
        mean, log_var = self.net(u).chunk(2, dim=-1)
        return mean, log_var


# ----------------------------------------------------------------------------- model
class IVAEs(VAE):
    """iVAE / IDVAE / CI-iVAE (module docstring) with the drive's encoder (mean + log variance) and decoder."""

    def __init__(self, model_config: IVAEsConfig, encoder=None, decoder=None):
        if model_config.n_aux < 1:
            raise _config_error(
                "ivaes needs the auxiliary variable u: n_aux is 0 (the engine sets it from the "
                "columns of json§DS_confounders)"
            )
        super().__init__(model_config, encoder=encoder, decoder=decoder)
        self.model_name = f"iVAEs_{model_config.ivae_mode}"
        self.mode = model_config.ivae_mode
        self.label_prior = LabelPrior(model_config.n_aux, model_config.hidden_nodes_label_prior, self.latent_dim)
        self.label_decoder = (
            _MLP(self.latent_dim, model_config.hidden_nodes_label_decoder, model_config.n_aux)
            if self.mode == "IDVAE"
            else None
        )
        # CI-iVAE's grid of mixture weights: alpha_step, 2 alpha_step, ... < 1 (the ends are left out, see the
        # module docstring)
        step = model_config.alpha_step
        grid = torch.arange(1, int(math.ceil(1 / step)) + 1, dtype=torch.float64) * step
        self.register_buffer("alphas", grid[grid < 1 - 1e-9].float(), persistent=False)

    # one place draws the standard normal noise, so tests can fix it
    def _noise(self, like: Tensor, *extra: int) -> Tensor:
        return torch.randn(*like.shape, *extra, dtype=like.dtype, device=like.device)

    def _reduce(self, elementwise: Tensor, gaussian: bool) -> Tensor:
        if self.model_config.orig_recon_loss:
            return elementwise.mean(-1)
        return (0.5 if gaussian else 1.0) * elementwise.sum(-1)

    def recon_term(self, recon: Tensor, x: Tensor) -> Tensor:
        """Per-sample reconstruction term (negative log-likelihood up to constants); see module docstring."""
        b = x.shape[0]
        if self.model_config.reconstruction_loss == "bce":
            e = F.binary_cross_entropy(recon.reshape(b, -1), x.reshape(b, -1), reduction="none")
            return self._reduce(e, gaussian=False)
        # on a ReconTarget this is the drive's element-wise loss (l1, custom, masked)
        e = F.mse_loss(recon.reshape(b, -1), x.reshape(b, -1), reduction="none")
        return self._reduce(e, gaussian=True)

    def _aux_u(self, inputs, x: Tensor) -> Tensor:
        u = inputs.get(AUX_U) if hasattr(inputs, "get") else None
        if u is None:
            raise _config_error(
                f"ivaes needs the auxiliary variable u in the batch under {AUX_U!r} (the "
                "engine builds it from json§DS_confounders); this batch has none"
            )
        u = torch.as_tensor(u).to(device=x.device, dtype=x.dtype)
        n = self.model_config.n_aux
        if u.dim() != 2 or u.shape != (x.shape[0], n):
            raise _config_error(
                f"ivaes: {AUX_U} must have shape (batch, n_aux) = ({x.shape[0]}, {n}), got {tuple(u.shape)}"
            )
        if not torch.isfinite(u).all():
            raise _config_error(f"ivaes: {AUX_U} holds NaN or inf values (missing values must be 0)")
        return u

    def forward(self, inputs, **kwargs) -> ModelOutput:
        x = inputs["data"]
        u = self._aux_u(inputs, x)
        cfg, beta = self.model_config, self.model_config.beta
        x_in = x
        if self.training and cfg.input_jitter > 0:
            x_in = x + cfg.input_jitter * self._noise(x)
        enc = self.encoder(x_in)
        mu_x, lv_x = enc.embedding, enc.log_covariance
        mu_u, lv_u = self.label_prior(u)
        mu_p, lv_p = product_of_gaussians(mu_x, lv_x, mu_u, lv_u)

        z_post = mu_p + (0.5 * lv_p).exp() * self._noise(mu_p)
        recon_post = self.decoder(z_post)["reconstruction"]
        rec_post = self.recon_term(recon_post, x)
        kl_post = gaussian_kl(mu_p, lv_p, mu_u, lv_u)
        neg_elbo_ivae = rec_post + beta * kl_post
        terms: dict[str, Tensor] = {"recon_loss": rec_post.mean(), "reg_loss": kl_post.mean()}
        extra: dict[str, Tensor] = {}

        if self.mode == "iVAE":
            per_sample = neg_elbo_ivae
        elif self.mode == "IDVAE":
            z_u = mu_u + (0.5 * lv_u).exp() * self._noise(mu_u)
            u_rec = self.label_decoder(z_u)
            label_rec = self._reduce(F.mse_loss(u_rec, u, reduction="none"), gaussian=True)
            label_kl = gaussian_kl(mu_u, lv_u, torch.zeros_like(mu_u), torch.zeros_like(lv_u))
            per_sample = neg_elbo_ivae + label_rec + beta * label_kl
            terms.update(label_recon_loss=label_rec.mean(), label_reg_loss=label_kl.mean())
            extra["aux_u_recon"] = u_rec
        else:
            per_sample, enc_terms, alpha = self._ci_bound(mu_x, lv_x, mu_p, lv_p, mu_u, lv_u, x, neg_elbo_ivae)
            terms.update(enc_terms)
            extra["alpha"] = alpha

        return ModelOutput(loss=per_sample.mean(), **terms, recon_x=recon_post, z=z_post, **extra)

    def _ci_bound(self, mu_x, lv_x, mu_p, lv_p, mu_u, lv_u, x, neg_elbo_ivae):
        """Per-sample negative CI-iVAE bound (min over the a grid) and its terms."""
        beta, m = self.model_config.beta, self.model_config.M
        z_enc = mu_x + (0.5 * lv_x).exp() * self._noise(mu_x)
        rec_enc = self.recon_term(self.decoder(z_enc)["reconstruction"], x)
        kl_enc = gaussian_kl(mu_x, lv_x, mu_u, lv_u)
        neg_elbo_enc = rec_enc + beta * kl_enc

        a = self.alphas.to(mu_x.dtype)
        kl_x, kl_p = skew_kls(mu_x, lv_x, mu_p, lv_p, a, self._noise(mu_x, m), self._noise(mu_p, m))
        skew = a * kl_x + (1 - a) * kl_p
        bounds = a * neg_elbo_enc[:, None] + (1 - a) * neg_elbo_ivae[:, None] - beta * skew
        per_sample, idx = bounds.min(dim=1)
        chosen = a[idx]
        terms = {
            "encoder_recon_loss": rec_enc.mean(),
            "encoder_reg_loss": kl_enc.mean(),
            "skew_kl_loss": skew.gather(1, idx[:, None]).mean(),
        }
        return per_sample, terms, chosen.mean().detach()


SPECS = (
    ModelSpec(
        name="ivaes",
        config_cls=IVAEsConfig,
        model_cls=IVAEs,
        aux_inputs=(AUX_U,),
        data_params=("n_aux",),
        notes="identifiable VAEs (ivae_mode iVAE | IDVAE | CI-iVAE): needs the auxiliary variable u "
        "(batch key aux_u, from json§DS_confounders); embed() is the mean of q(z|x).",
    ),
)
