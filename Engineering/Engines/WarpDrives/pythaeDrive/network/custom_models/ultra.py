"""ultra_vae and ultra_factor_vae: pythae's VAE / FactorVAE with phenotype heads and anti-confounder strategies.

The ancestor's (GlastonburyGroup/ImLatent) models of the same names; VAE: Kingma & Welling, ICLR 2014; FactorVAE:
Kim & Mnih, ICML 2018 (pythae's implementations, unchanged). What the heads add is described in :mod:`.heads`.
The heads read the posterior mean, the latent the run writes to emb.h5 (see ``CovariateHeads.forward``), in
training and for the predictions (pheno_pred.h5, conf_pred.h5).
"""

from __future__ import annotations

from pydantic.dataclasses import dataclass
from pythae.models import VAE, FactorVAE, FactorVAEConfig, VAEConfig

from ..spec import ADVERSARIAL, ModelSpec, OptimiserPlan
from . import aux
from .heads import CovariateHeads, CovariateHeadsConfig


@dataclass
class UltraVAEConfig(VAEConfig, CovariateHeadsConfig):
    """pythae's VAEConfig with the keys of :class:`.heads.CovariateHeadsConfig`."""


@dataclass
class UltraFactorVAEConfig(FactorVAEConfig, CovariateHeadsConfig):
    """pythae's FactorVAEConfig (``gamma``) with the keys of :class:`.heads.CovariateHeadsConfig`."""


def forward_with_mean(encoder, forward):
    """``forward()`` (pythae's), and the posterior mean of its first ``encoder`` call (the rows it reconstructs)."""
    means = []
    hook = encoder.register_forward_hook(lambda module, args, output: means.append(output["embedding"]))
    try:
        out = forward()
    finally:
        hook.remove()
    return out, means[0]


def _rows(inputs, index):
    """The batch entries the heads read, restricted to the rows a model encoded (FactorVAE: a random half)."""
    return {k: v[index] for k, v in inputs.items() if k in aux.ALL_KEYS}


class UltraVAE(VAE):
    """pythae's VAE; the loss adds the weighted head terms, each also reported under its own name."""

    def __init__(self, model_config: UltraVAEConfig, encoder=None, decoder=None):
        super().__init__(model_config, encoder=encoder, decoder=decoder)
        self.covariate_heads = CovariateHeads(model_config)

    def forward(self, inputs, **kwargs):
        out, mean = forward_with_mean(self.encoder, lambda: super(UltraVAE, self).forward(inputs, **kwargs))
        if self.covariate_heads.active:
            terms = self.covariate_heads(out.z, inputs, mean)
            for name, value in terms.items():
                out[name] = value
            out["loss"] = out.loss + self.covariate_heads.weighted_total(terms)
        return out


class UltraFactorVAE(FactorVAE):
    """pythae's FactorVAE; the head terms join the autoencoder's loss (the heads are in its optimiser), on the half
    of the batch that pythae encodes and reconstructs."""

    def __init__(self, model_config: UltraFactorVAEConfig, encoder=None, decoder=None):
        super().__init__(model_config, encoder=encoder, decoder=decoder)
        self.covariate_heads = CovariateHeads(model_config)

    def forward(self, inputs, **kwargs):
        out, mean = forward_with_mean(self.encoder, lambda: super(UltraFactorVAE, self).forward(inputs, **kwargs))
        if self.covariate_heads.active:
            terms = self.covariate_heads(out.z, _rows(inputs, out.recon_x_indices), mean)
            for name, value in terms.items():
                out[name] = value
            extra = self.covariate_heads.weighted_total(terms)
            out["autoencoder_loss"] = out.autoencoder_loss + extra
            out["loss"] = out.loss + extra
        return out


_AUX = dict(aux_inputs=aux.HEAD_KEYS, data_params=aux.HEAD_PARAMS)
SPECS = (
    ModelSpec(
        "ultra_vae",
        UltraVAEConfig,
        UltraVAE,
        **_AUX,
        notes="VAE + phenotype heads (learn_phenotypes) and anti-confounder strategies "
        "(anti_confounders_strategy 1: adversary with gradient reversal, 2: correlation penalty).",
    ),
    ModelSpec(
        "ultra_factor_vae",
        UltraFactorVAEConfig,
        UltraFactorVAE,
        extra_nets=("latent_discriminator",),
        optimisers=(
            OptimiserPlan("autoencoder", ("encoder", "decoder", "covariate_heads"), "autoencoder_loss"),
            ADVERSARIAL[1],
        ),
        monitor="autoencoder_loss",
        pythae_trainer="AdversarialTrainer",
        **_AUX,
        notes="FactorVAE + the ultra_vae heads; needs batches of >= 2 (the heads see the reconstructed half).",
    ),
)
