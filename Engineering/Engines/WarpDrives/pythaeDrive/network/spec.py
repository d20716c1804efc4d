"""What the drive needs to know to build and train one model (pythae's or one of ours): :class:`ModelSpec`.

Kept apart from the table (registry.py) so that the models of ``custom_models`` can declare their own spec.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from Engineering.Engines.WarpDrives.errors import DriveError


class PythaeDriveConfigError(DriveError):
    """A pythae drive configuration value the user can fix."""


@dataclass(frozen=True)
class OptimiserPlan:
    """One optimiser of a model.

    name: optimiser name ('model', 'autoencoder', 'encoder', 'decoder', 'discriminator').
    modules: attributes of the pythae model whose parameters it owns; () = every parameter.
    loss: key of the pythae output it minimises.
    update_flag: key of a boolean pythae output that says whether to update it on this batch.
    group_options: per-module optimiser options pythae prescribes, computed from the model
        config (e.g. rae_l2's decoder weight decay); one param group per module then.
    """

    name: str
    modules: tuple[str, ...] = ()
    loss: str = "loss"
    update_flag: str | None = None
    group_options: Callable[[Any], dict[str, dict[str, Any]]] | None = None


SINGLE = (OptimiserPlan("model"),)
ADVERSARIAL = (
    OptimiserPlan("autoencoder", ("encoder", "decoder"), "autoencoder_loss"),
    OptimiserPlan("discriminator", ("discriminator",), "discriminator_loss"),
)


@dataclass(frozen=True)
class ModelSpec:
    """How to build and train one pythae model.

    encoder_kind: what the encoder returns -- 'ae' (embedding), 'vae' (+ log_covariance),
        'svae' (+ log_concentration), 'pvae' (embedding on the Poincaré ball + posterior
        scale), 'vqvae' (embedding quantised by pythae).
    extra_nets: networks besides encoder/decoder: 'image_discriminator' and 'metric' are
        built by the drive; 'latent_discriminator' pythae builds itself (MLP on the latent).
    optimisers: see :class:`OptimiserPlan`; more than one -> manual optimisation.
    native_bce: pythae's own 'bce' branch applies (else BCE goes through ReconTarget).
    custom_recon: the pixel reconstruction term can be replaced (False when the model's
        reconstruction term is not a pixel loss: MS-SSIM, discriminator features).
    needs_autograd: the forward pass itself calls ``torch.autograd.grad`` (also in eval).
    monitor: the pythae output that should go down during training (used by tests and as
        the engine's main training-loss log).
    defaults: our defaults where pythae's do not train on images (below ``model_params``).
    networks: builds (encoder, decoder, extra networks) from (drive config, model config) instead of the drive's
        real-valued conv/resnet nets (the complex-valued models); None = the drive's own.
    aux_inputs: batch keys besides the image that the model reads (phenotypes, confounders, auxiliary
        variables): the drive passes those present in the batch into the model's inputs dict.
    data_params: model config fields whose values come from the data (e.g. the number of phenotype columns),
        set by the engine, not by the user.
    """

    name: str
    config_cls: type
    model_cls: type
    encoder_kind: str = "vae"
    extra_nets: tuple[str, ...] = ()
    optimisers: tuple[OptimiserPlan, ...] = SINGLE
    native_bce: bool = True
    custom_recon: bool = True
    needs_autograd: bool = False
    monitor: str = "loss"
    pythae_trainer: str = "BaseTrainer"
    notes: str = ""
    defaults: tuple[tuple[str, Any], ...] = ()
    networks: Callable[..., tuple[Any, Any, dict[str, Any]]] | None = None
    aux_inputs: tuple[str, ...] = ()
    data_params: tuple[str, ...] = ()

    @property
    def multi_optimiser(self) -> bool:
        return len(self.optimisers) > 1
