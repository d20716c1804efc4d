"""Registry of every model pythae 0.1.2 exports: name -> config class, model class and training needs.

pythae: Chadebec et al., "Pythae: Unifying Generative Autoencoders in Python", NeurIPS 2022.
Each pythae model is a (config dataclass, model class) pair; this table adds what our drive
needs to build and train it: which encoder outputs it reads, which extra networks it has,
and which optimisers pythae's trainers give it (``pythae.pipelines.training`` picks
``CoupledOptimizerTrainer`` for rae_l2 and piwae, ``AdversarialTrainer`` for aae and
factor_vae, ``CoupledOptimizerAdversarialTrainer`` for vaegan, ``BaseTrainer`` otherwise).
"""

from __future__ import annotations

import pythae.models as pm

from . import pythae_models as ours
from .custom_models import CUSTOM_MODELS
from .spec import ADVERSARIAL, ModelSpec, OptimiserPlan


def _spec(name, config_cls, model_cls, **kw) -> ModelSpec:
    return ModelSpec(name=name, config_cls=config_cls, model_cls=model_cls, **kw)


_AE = dict(encoder_kind="ae", native_bce=False)

MODELS: dict[str, ModelSpec] = {
    s.name: s
    for s in [
        _spec("ae", pm.AEConfig, pm.AE, **_AE),
        _spec("vae", pm.VAEConfig, pm.VAE),
        _spec("beta_vae", pm.BetaVAEConfig, pm.BetaVAE),
        _spec(
            "disentangled_beta_vae",
            pm.DisentangledBetaVAEConfig,
            pm.DisentangledBetaVAE,
            notes="reads `epoch` (KL capacity warm-up): pass the current epoch to forward().",
        ),
        _spec(
            "factor_vae",
            pm.FactorVAEConfig,
            pm.FactorVAE,
            extra_nets=("latent_discriminator",),
            optimisers=ADVERSARIAL,
            monitor="autoencoder_loss",
            pythae_trainer="AdversarialTrainer",
            notes="needs batches of >= 2; reconstructs a random half of the batch (DriveOutput.recon_index).",
        ),
        _spec(
            "beta_tc_vae",
            pm.BetaTCVAEConfig,
            pm.BetaTCVAE,
            notes="reads `dataset_size` (minibatch stratified sampling): pass the train set size to forward().",
        ),
        _spec("iwae", pm.IWAEConfig, pm.IWAE),
        _spec("miwae", pm.MIWAEConfig, pm.MIWAE),
        _spec(
            "piwae",
            pm.PIWAEConfig,
            pm.PIWAE,
            optimisers=(
                OptimiserPlan("encoder", ("encoder",), "encoder_loss"),
                OptimiserPlan("decoder", ("decoder",), "decoder_loss"),
            ),
            pythae_trainer="CoupledOptimizerTrainer",
            notes="encoder minimises the MIWAE bound, decoder the IWAE bound (Rainforth et al., 2018).",
        ),
        _spec("ciwae", pm.CIWAEConfig, pm.CIWAE),
        _spec(
            "msssim_vae",
            pm.MSSSIM_VAEConfig,
            pm.MSSSIM_VAE,
            custom_recon=False,
            native_bce=False,
            notes="reconstruction term is MS-SSIM; reconstruction_loss must stay 'mse' (= the model's own).",
        ),
        _spec("wae", pm.WAE_MMD_Config, pm.WAE_MMD, **_AE),
        _spec("info_vae", pm.INFOVAE_MMD_Config, pm.INFOVAE_MMD),
        _spec(
            "rae_l2",
            pm.RAE_L2_Config,
            pm.RAE_L2,
            **_AE,
            optimisers=(
                OptimiserPlan(
                    "model",
                    ("encoder", "decoder"),
                    "loss",
                    group_options=lambda c: {
                        "encoder": {"weight_decay": 0.0},
                        "decoder": {"weight_decay": c.reg_weight},
                    },
                ),
            ),
            pythae_trainer="CoupledOptimizerTrainer",
            notes="pythae trains it with two optimisers on the same loss that differ only in the "
            "decoder's weight decay (= reg_weight, the L2 decoder regulariser); here that is "
            "one optimiser with two param groups, which is the same update.",
        ),
        _spec(
            "rae_gp",
            pm.RAE_GP_Config,
            pm.RAE_GP,
            **_AE,
            needs_autograd=True,
            notes="gradient penalty on the decoder: forward calls autograd.grad, also in validation.",
        ),
        _spec(
            "vamp",
            pm.VAMPConfig,
            pm.VAMP,
            notes="pseudo-inputs are squashed to [0, 1] (pythae's Hardtanh): data should be in [0, 1].",
        ),
        _spec(
            "hvae",
            pm.HVAEConfig,
            ours.HVAE,
            needs_autograd=True,
            notes="leapfrog steps call autograd.grad in forward, also in validation.",
        ),
        _spec(
            "rhvae",
            pm.RHVAEConfig,
            ours.RHVAE,
            extra_nets=("metric",),
            needs_autograd=True,
            notes="call PythaeDrive.on_train_epoch_end() after each training epoch (pythae's "
            "model.update(): freezes the metric used in eval).",
        ),
        _spec("svae", pm.SVAEConfig, pm.SVAE, encoder_kind="svae"),
        _spec(
            "pvae",
            pm.PoincareVAEConfig,
            pm.PoincareVAE,
            encoder_kind="pvae",
            notes="the encoder maps its mean onto the Poincaré ball (expmap0, as Mathieu et al. 2019) and "
            "keeps it inside (pythae's projection). Prefer lr ~1e-4: on the 64x64 demo, one Adam step "
            "at 1e-3 pushes the means to the ball's edge, where they stay (KL ~94 instead of ~17). "
            "posterior_distribution='riemannian_normal' is unreliable in pythae 0.1.2: its "
            "rejection sampler can fail ('initial anchor points must span mode of PDF') once the "
            "posterior scale grows (seen within 5 Adam steps at lr 2e-3); the default wrapped "
            "normal is robust.",
        ),
        _spec("vae_iaf", pm.VAE_IAF_Config, pm.VAE_IAF),
        _spec("vae_lin_nf", pm.VAE_LinNF_Config, pm.VAE_LinNF),
        _spec(
            "aae",
            pm.Adversarial_AE_Config,
            pm.Adversarial_AE,
            extra_nets=("latent_discriminator",),
            optimisers=ADVERSARIAL,
            monitor="autoencoder_loss",
            pythae_trainer="AdversarialTrainer",
            notes="with deterministic_posterior=True the log_covariance head gets no gradient.",
        ),
        _spec(
            "vaegan",
            pm.VAEGANConfig,
            pm.VAEGAN,
            extra_nets=("image_discriminator",),
            custom_recon=False,
            native_bce=False,
            optimisers=(
                OptimiserPlan("encoder", ("encoder",), "encoder_loss", "update_encoder"),
                OptimiserPlan("decoder", ("decoder",), "decoder_loss", "update_decoder"),
                OptimiserPlan("discriminator", ("discriminator",), "discriminator_loss", "update_discriminator"),
            ),
            monitor="encoder_loss",
            pythae_trainer="CoupledOptimizerAdversarialTrainer",
            notes="reconstruction term is a distance between discriminator features of layer "
            "`reconstruction_layer` (pythae default -1 = the last layer, the real/fake score; "
            "our discriminator has n_levels + 3 layers, conv stages first); reconstruction_loss "
            "must stay 'mse'. Decoder/discriminator updates are gated by pythae's equilibrium rule.",
        ),
        # pythae's default (use_ema False) learns the codebook by gradient from codes initialised in +-1/512: the
        # straight-through encoder outputs outrun it and the quantiser loss grows 24x in 4 demo epochs (45 -> 1067).
        # The EMA codebook update (van den Oord et al. 2017, appendix; Razavi et al. 2019) follows the encoder.
        _spec(
            "vqvae",
            pm.VQVAEConfig,
            pm.VQVAE,
            encoder_kind="vqvae",
            native_bce=False,
            defaults=(("use_ema", True),),
            notes="embed() gives the quantised code, flattened; vq_code_dim sets the code vector size; "
            "the codebook is updated by EMA (use_ema true, pythae's default is false).",
        ),
    ]
}

MODELS.update({s.name: s for s in CUSTOM_MODELS})  # the ancestor's own models (custom_models/)

ALIASES = {
    "wae_mmd": "wae",
    "info_vae_mmd": "info_vae",
    "infovae_mmd": "info_vae",
    "adversarial_ae": "aae",
    "vae_gan": "vaegan",
    "vq_vae": "vqvae",
    "poincare_vae": "pvae",
}


def model_names() -> tuple[str, ...]:
    return tuple(MODELS)


def get_spec(name: str) -> ModelSpec:
    """The spec of a model by name (case-insensitive; pythae folder names accepted as aliases)."""
    key = str(name).strip().lower()
    if key.startswith("custom_") and key[len("custom_") :] in MODELS:  # the ancestor's spelling of its own models
        key = key[len("custom_") :]
    key = ALIASES.get(key, key)
    if key not in MODELS:
        raise ValueError(f"unknown pythae model {name!r}; valid names: {', '.join(MODELS)}")
    return MODELS[key]
