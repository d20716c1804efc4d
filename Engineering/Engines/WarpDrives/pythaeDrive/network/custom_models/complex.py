"""Complex-valued autoencoders: ``complex_ae``, ``complex_vae``, ``complex_factor_vae`` (the ancestor's models,
GlastonburyGroup/ImLatent, ``--pythae_model [custom_]complex_<name>``), for complex data kept complex
(``--complex_mode complex``: MRI complex series, or magnitude/phase pairs combined into one).

pythae-style pairs (config dataclass subclassing pythae's, model subclassing pythae's) on the networks of
``WarpDrives/ComplexAE``: complex convolutions, complex batch normalisation that whitens the 2x2 covariance of
(Re, Im) and CReLU (Trabelsi et al., "Deep Complex Networks", ICLR 2018) or modReLU (Arjovsky, Shah & Bengio,
"Unitary Evolution Recurrent Neural Networks", ICML 2016). The drive builds them through ``ModelSpec.networks``.

The latent is REAL (the encoder maps its deepest complex features, split into Re and Im, with a real linear layer;
see ``ComplexEncoder``), so emb.h5, the tables and every downstream tool see float32 latents as for any model, and
the VAE parts are pythae's real Gaussian ones: reparameterisation, KL to N(0, I), and FactorVAE's latent
discriminator on the real z (Kim & Mnih, ICML 2018). The ancestor's latent was complex (a complex Gaussian with a
pseudo-covariance); ours is not, by the output contract.

The reconstruction term is ``crecon`` on the complex difference (``ComplexAE/loss.py``), chosen by the config key
``crecon``: "xie" (the ancestor's default: L1 of Re, Im and magnitude), "mse" (|d|^2) or "l1" (|d|). Per sample it is
summed over the voxels, then averaged over the batch (pythae's reduction); in the VAEs the "mse" sum is halved,
the negative log-likelihood of a complex Gaussian with unit variance per part, as pythae's VAE halves its mse.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic.dataclasses import dataclass
from pythae.models import AE, VAE, AEConfig, FactorVAE, FactorVAEConfig, VAEConfig
from pythae.models.base.base_utils import ModelOutput
from pythae.models.nn import BaseDecoder, BaseEncoder

from ..complex_ae import ComplexAEConfig, ComplexAEError, ComplexDecoder, ComplexEncoder, crecon
from ..spec import ADVERSARIAL, ModelSpec

NAMES = ("complex_ae", "complex_vae", "complex_factor_vae")


# ----------------------------------------------------------------------------------------------------- configs
# The ancestor's config class names (CVAEConfig, CVVAEConfig, CVFactorVAEConfig), so that the "name" its saved
# pythae configs carry is accepted. ``activation`` / ``modrelu_bias`` choose the complex nonlinearity.
@dataclass
class CVAEConfig(AEConfig):
    """complex_ae. crecon: "xie" | "mse" | "l1" (module docstring); activation: "modrelu" (the ancestor's) |
    "crelu"; modrelu_bias: modReLU's initial bias (negative: a small dead zone around 0)."""

    crecon: Literal["xie", "mse", "l1"] = "xie"
    activation: Literal["modrelu", "crelu"] = "modrelu"
    modrelu_bias: float = -0.1


@dataclass
class CVVAEConfig(VAEConfig):
    """complex_vae: the keys of :class:`CVAEConfig`; pythae's ``reconstruction_loss`` is the drive's and unused."""

    crecon: Literal["xie", "mse", "l1"] = "xie"
    activation: Literal["modrelu", "crelu"] = "modrelu"
    modrelu_bias: float = -0.1


@dataclass
class CVFactorVAEConfig(FactorVAEConfig):
    """complex_factor_vae: the keys of :class:`CVAEConfig` and pythae's FactorVAE ``gamma`` (the weight of the
    total-correlation term), 0.5 by default as the ancestor's complex FactorVAE (pythae's FactorVAE: 2.0)."""

    gamma: float = 0.5
    crecon: Literal["xie", "mse", "l1"] = "xie"
    activation: Literal["modrelu", "crelu"] = "modrelu"
    modrelu_bias: float = -0.1


# ---------------------------------------------------------------------------------------------------- networks
class ComplexPythaeEncoder(BaseEncoder):
    """``ComplexEncoder`` as a pythae encoder: ModelOutput(embedding[, log_covariance]), both real."""

    def __init__(self, config: ComplexAEConfig):
        super().__init__()
        self.net = ComplexEncoder(config)

    def forward(self, x: torch.Tensor) -> ModelOutput:
        enc = self.net(x)
        out = ModelOutput(embedding=enc.embedding)
        if enc.log_var is not None:
            out["log_covariance"] = enc.log_var
        return out


class ComplexPythaeDecoder(BaseDecoder):
    """``ComplexDecoder`` as a pythae decoder: real latent -> ModelOutput(reconstruction), complex."""

    def __init__(self, config: ComplexAEConfig):
        super().__init__()
        self.net = ComplexDecoder(config)

    def forward(self, z: torch.Tensor) -> ModelOutput:
        return ModelOutput(reconstruction=self.net(z))


def complex_networks(drive_cfg, model_cfg):
    """The ``ModelSpec.networks`` hook: (encoder, decoder, no extra nets) from the drive's config (its widths rule:
    n_features doubling per level, capped at 8x) and the model config's activation. The discriminator of
    complex_factor_vae is pythae's own latent MLP, built by the model."""
    name = drive_cfg.model
    if drive_cfg.nn != "conv":
        raise ComplexAEError(
            f"{name}: its networks are complex convolutions; --model§pythae§nn {drive_cfg.nn} is not "
            "available for the complex models (use conv, the ancestor's cvconvnet)"
        )
    if drive_cfg.output_activation not in ("auto", "identity"):
        raise ComplexAEError(
            f"{name}: a complex reconstruction takes any complex value; --model§pythae§"
            f"output_activation {drive_cfg.output_activation} is not available (use auto)"
        )
    levels = drive_cfg.n_levels
    factor = 2**levels
    if any(side % factor for side in drive_cfg.input_shape):
        raise ComplexAEError(
            f"{name}: --input_shape {','.join(map(str, drive_cfg.input_shape))} must be divisible by "
            f"2**n_levels = {factor} on every side (each level halves it; --model§pythae§n_levels "
            f"{levels}): change --input_shape or the number of levels"
        )
    widths = tuple(min(drive_cfg.n_features * 2**i, 8 * drive_cfg.n_features) for i in range(levels))
    net_cfg = ComplexAEConfig(
        spatial_dims=3 if drive_cfg.is3D else 2,
        in_channels=drive_cfg.in_channels,
        input_size=tuple(drive_cfg.input_shape),
        widths=widths,
        latent_dim=drive_cfg.latent_dim,
        activation=model_cfg.activation,
        modrelu_bias=model_cfg.modrelu_bias,
        variational=name != "complex_ae",
    )
    return ComplexPythaeEncoder(net_cfg), ComplexPythaeDecoder(net_cfg), {}


# ------------------------------------------------------------------------------------------------------ models
def _complex_input(x: torch.Tensor, name: str) -> torch.Tensor:
    if not torch.is_tensor(x) or not x.is_complex():
        raise ComplexAEError(
            f"{name} reads complex data kept complex, got a real batch ({getattr(x, 'dtype', x)}): "
            "train it on a complex cohort with --complex_mode complex (e.g. --datajson_path "
            "Configs/dataNpath_demo_complex.json --complex_mode complex --norm_type divbymax)"
        )
    return x


def recon_term(recon: torch.Tensor, x: torch.Tensor, kind: str, halve_mse: bool) -> torch.Tensor:
    """Per-sample crecon summed over voxels (B,); "mse" halved for the Gaussian likelihood of the VAEs."""
    per_sample = crecon(recon, x, kind, "none").reshape(x.shape[0], -1).sum(dim=-1)
    return 0.5 * per_sample if halve_mse and kind == "mse" else per_sample


def _kl(mu: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, diag exp(log_var)) || N(0, I)) per sample (B,), pythae's formula."""
    return -0.5 * torch.sum(1 + log_var - mu.pow(2) - log_var.exp(), dim=-1)


class CVAE(AE):
    """complex_ae: a deterministic complex autoencoder; loss = recon_loss = crecon (summed per sample)."""

    def __init__(self, model_config: CVAEConfig, encoder: BaseEncoder, decoder: BaseDecoder):
        super().__init__(model_config, encoder=encoder, decoder=decoder)
        self.model_name = "CVAE"

    def forward(self, inputs, **kwargs) -> ModelOutput:
        x = _complex_input(inputs["data"], "complex_ae")
        z = self.encoder(x).embedding
        recon_x = self.decoder(z)["reconstruction"]
        recon_loss = recon_term(recon_x, x, self.model_config.crecon, halve_mse=False).mean(dim=0)
        return ModelOutput(loss=recon_loss, recon_loss=recon_loss, recon_x=recon_x, z=z)


class CVVAE(VAE):
    """complex_vae: complex encoder/decoder, real Gaussian posterior; loss = recon_loss + reg_loss (KL)."""

    def __init__(self, model_config: CVVAEConfig, encoder: BaseEncoder, decoder: BaseDecoder):
        super().__init__(model_config, encoder=encoder, decoder=decoder)
        self.model_name = "CVVAE"

    def forward(self, inputs, **kwargs) -> ModelOutput:
        x = _complex_input(inputs["data"], "complex_vae")
        out = self.encoder(x)
        mu, log_var = out.embedding, out.log_covariance
        z, _ = self._sample_gauss(mu, torch.exp(0.5 * log_var))
        recon_x = self.decoder(z)["reconstruction"]
        recon = recon_term(recon_x, x, self.model_config.crecon, halve_mse=True)
        kld = _kl(mu, log_var)
        return ModelOutput(
            loss=(recon + kld).mean(dim=0), recon_loss=recon.mean(dim=0), reg_loss=kld.mean(dim=0), recon_x=recon_x, z=z
        )


class CVFactorVAE(FactorVAE):
    """complex_factor_vae: pythae's FactorVAE (Kim & Mnih, ICML 2018) with the complex networks and crecon.

    As pythae's: the batch is split in two random halves; the first is reconstructed (``recon_x_indices``), the
    second's latents, permuted per dimension, are the discriminator's "independent" samples. Logged terms:
    recon_loss, reg_loss (KL), tc_loss (the discriminator's estimate of the total correlation, before ``gamma``),
    autoencoder_loss = recon + KL + gamma * TC (the autoencoder optimiser's), discriminator_loss (its optimiser's).
    """

    def __init__(self, model_config: CVFactorVAEConfig, encoder: BaseEncoder, decoder: BaseDecoder):
        super().__init__(model_config, encoder=encoder, decoder=decoder)
        self.model_name = "CVFactorVAE"

    def _encode_sample(self, x):
        out = self.encoder(x)
        mu, log_var = out.embedding, out.log_covariance
        z, _ = self._sample_gauss(mu, torch.exp(0.5 * log_var))
        return mu, log_var, z

    def forward(self, inputs, **kwargs) -> ModelOutput:
        x_in = _complex_input(inputs["data"], "complex_factor_vae")
        n = x_in.shape[0]
        if n < 2:
            raise ComplexAEError(
                "complex_factor_vae needs batches of at least 2 samples (one half is reconstructed, "
                "the other permuted for the discriminator): raise --batch_size"
            )
        idx = torch.randperm(n, device=x_in.device)
        idx_1, idx_2 = idx[n // 2 :], idx[: n // 2]
        x = x_in[idx_1]
        mu, log_var, z = self._encode_sample(x)
        recon_x = self.decoder(z)["reconstruction"]
        _, _, z_bis = self._encode_sample(x_in[idx_2])
        z_bis_permuted = self._permute_dims(z_bis).detach()

        recon = recon_term(recon_x, x, self.model_config.crecon, halve_mse=True)
        kld = _kl(mu, log_var)
        score = self.discriminator(z)
        tc = (score[:, 0] - score[:, 1]).mean()
        autoencoder_loss = (recon + kld).mean(dim=0) + self.gamma * tc
        score_perm = self.discriminator(z_bis_permuted)
        fake = torch.zeros(score.shape[0], dtype=torch.long, device=score.device)
        true = torch.ones(score_perm.shape[0], dtype=torch.long, device=score.device)
        discriminator_loss = 0.5 * (F.cross_entropy(score, fake) + F.cross_entropy(score_perm, true))
        return ModelOutput(
            loss=autoencoder_loss + discriminator_loss,
            recon_loss=recon.mean(dim=0),
            reg_loss=kld.mean(dim=0),
            tc_loss=tc,
            autoencoder_loss=autoencoder_loss,
            discriminator_loss=discriminator_loss,
            recon_x=recon_x,
            recon_x_indices=idx_1,
            z=z,
            z_bis_permuted=z_bis_permuted,
        )


def complex_data_problem(model: str, complex_mode: str) -> str | None:
    """Why ``model`` cannot train on data read with ``complex_mode`` (None: it can): the complex models read complex
    data kept complex, every other model real channels. For the engine, to refuse before anything runs."""
    is_complex_model = str(model).lower().removeprefix("custom_") in NAMES
    if is_complex_model and complex_mode != "complex":
        return (
            f"--pythae_model {model} reads complex data kept complex: use a complex cohort with --complex_mode "
            f"complex (got {complex_mode!r}; e.g. --datajson_path Configs/dataNpath_demo_complex.json "
            "--complex_mode complex --norm_type divbymax)"
        )
    if not is_complex_model and complex_mode == "complex":
        return (
            f"--complex_mode complex keeps the data complex, which only the complex models read "
            f"({', '.join(NAMES)}); --pythae_model {model} needs real channels (e.g. --complex_mode magnitude)"
        )
    return None


_NOTES = (
    "its reconstruction term is its own: crecon on the complex difference (model parameter crecon: xie, mse "
    "or l1); complex data only (--complex_mode complex); input_shape divisible by 2**n_levels; nn conv"
)

SPECS: tuple[ModelSpec, ...] = (
    ModelSpec(
        "complex_ae",
        CVAEConfig,
        CVAE,
        encoder_kind="ae",
        native_bce=False,
        custom_recon=False,
        networks=complex_networks,
        notes=_NOTES,
    ),
    ModelSpec(
        "complex_vae",
        CVVAEConfig,
        CVVAE,
        encoder_kind="vae",
        native_bce=False,
        custom_recon=False,
        networks=complex_networks,
        notes=_NOTES,
    ),
    ModelSpec(
        "complex_factor_vae",
        CVFactorVAEConfig,
        CVFactorVAE,
        encoder_kind="vae",
        native_bce=False,
        custom_recon=False,
        extra_nets=("latent_discriminator",),
        optimisers=ADVERSARIAL,
        monitor="autoencoder_loss",
        pythae_trainer="AdversarialTrainer",
        networks=complex_networks,
        notes=_NOTES + "; needs batches of >= 2 (reconstructs a random half, DriveOutput.recon_index)",
    ),
)
