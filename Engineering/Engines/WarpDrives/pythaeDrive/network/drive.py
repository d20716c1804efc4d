"""PythaeDrive: any pythae model on 2D/3D images as one pure-torch module.

pythae -- Chadebec, Vincent, Allassonnière, "Pythae: Unifying Generative Autoencoders in
Python -- A Benchmarking Use Case", NeurIPS 2022 (Datasets and Benchmarks) -- provides the
models, their configs and their losses. This drive adds our encoders/decoders
(networks.py), reconstruction losses beyond mse/bce (recon_losses.py), the model table
(registry.py), and the contract below, so that a Lightning engine can train every pythae
model without pythae's trainers. No Lightning, no file I/O here.

Contract for the engine
-----------------------
Build: ``drive = PythaeDrive(PythaeDriveConfig(model="vae", input_shape=(64, 64), ...))``.

Forward: ``out = drive(batch, epoch=current_epoch, dataset_size=len(train_set))`` where
``batch`` is the datamodule dict (image under ``config.data_key``, default 'inp', and the
optional mask under ``config.mask_key``) or a bare tensor. ``epoch`` / ``dataset_size``
are what pythae's trainer passes in training *and* evaluation (disentangled_beta_vae's
and vamp's warm-ups, beta_tc_vae's stratified sampling); pass them in validation too, or
e.g. disentangled_beta_vae validates against its fully warmed-up KL capacity.
``out`` is a :class:`DriveOutput`: ``loss`` (pythae's total; log it), ``losses`` (every
scalar term pythae reports: recon_loss, reg_loss, ...), ``recon``, ``z``, ``updates``.

Optimisers: ``drive.optimiser_specs()`` lists one :class:`OptimiserSpec` per optimiser,
in a fixed order; build each optimiser from ``spec.param_groups`` (torch param-group
dicts; group options such as rae_l2's decoder ``weight_decay`` override the engine's
defaults). Every trainable parameter belongs to exactly one optimiser.

- ``drive.is_multi_optimiser`` False (one spec named 'model'): automatic optimisation,
  ``return out.loss`` from training_step.
- True (factor_vae, aae: 'autoencoder' + 'discriminator'; piwae: 'encoder' + 'decoder';
  vaegan: 'encoder' + 'decoder' + 'discriminator'): manual optimisation. Per batch::

      out = drive(batch, epoch=..., dataset_size=...)
      for step in drive.losses_for_step(out):          # same order as optimiser_specs()
          if step.loss is None:                        # pythae says: no update on this batch
              continue
          self.manual_backward(step.loss / accumulate, inputs=step.params,
                               retain_graph=step.retain_graph)
          touched.add(step.optimiser)
      if (batch_idx + 1) % accumulate == 0:            # accumulation boundary
          for name, opt in zip(names, self.optimizers()):
              if name in touched:
                  self.clip_gradients(opt, gradient_clip_val=..., gradient_clip_algorithm=...)
                  opt.step()
              opt.zero_grad()
          touched.clear()

  Do every backward of a batch before any ``opt.step()`` (the losses share one graph).
  ``inputs=step.params`` makes each loss reach only its own optimiser's parameters -- the
  updates of the papers (e.g. PIWAE: encoder on the MIWAE bound, decoder on the IWAE
  bound). pythae's own trainers call ``backward()`` without ``inputs``, so there the later
  losses also add gradients to the earlier optimisers' parameters before they step; we
  do not reproduce that. Not tested under DDP (several backward passes through one graph).

Inference: ``drive.embed(x)`` -> (B, latent_dim): the posterior mean (encoder embedding;
unit-normalised for svae, on the Poincaré ball for pvae), or the quantised code for vqvae,
flattened. ``drive.reconstruct(x)`` = ``drive.decode(drive.embed(x))`` -> same shape as
``x`` (the decoder of that latent, through the flow for vae_iaf / vae_lin_nf). Neither
needs gradients; call them in eval mode.

Epoch end: call ``drive.on_train_epoch_end()`` after each training epoch (rhvae freezes its
metric there, as pythae's trainer does with ``model.update()``; a no-op otherwise).

Validation: ``drive.needs_grad_in_eval`` is True for hvae, rhvae and rae_gp, whose forward
itself calls ``torch.autograd.grad``: forward() enables grad itself, but it cannot inside
``torch.inference_mode`` -- use ``Trainer(inference_mode=False)`` for these models.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

from .config import PythaeDriveConfig, PythaeDriveConfigError
from .networks import Decoder, Discriminator, Encoder, Geometry, Metric, tokens_to_flat
from .recon_losses import ReconTarget
from .registry import ModelSpec

Tensor = torch.Tensor

# warnings pythae raises about encoder outputs that our encoders do provide
_EXPECTED_WARNINGS = ("Carefull, this model expects",)
# warnings pythae 0.1.2 triggers at every step with torch 2.x: svae calls torch.tensor() on a
# tensor; pvae's Riemannian-normal distributions define no ``arg_constraints``
_STEP_WARNINGS = ("To copy construct from a tensor", r".* does not define `arg_constraints`")


@dataclass(frozen=True)
class OptimiserSpec:
    """One optimiser: its name, torch param groups, and the loss (key of DriveOutput.losses) it minimises."""

    name: str
    param_groups: list[dict[str, Any]]
    loss_key: str

    @property
    def params(self) -> list[nn.Parameter]:
        return [p for g in self.param_groups for p in g["params"]]


@dataclass
class StepLoss:
    """What to backpropagate for one optimiser on this batch.

    loss: None when pythae says not to update this optimiser on this batch (vaegan).
    params: pass as ``backward(inputs=params)``; None = plain backward (single optimiser).
    retain_graph: True unless this is the last loss of the batch.
    """

    optimiser: str
    loss: Tensor | None
    params: list[nn.Parameter] | None
    retain_graph: bool


@dataclass
class DriveOutput:
    """Result of one forward pass.

    loss: pythae's total loss (for multi-optimiser models the sum of the parts; log it,
        but backpropagate ``losses_for_step`` instead).
    losses: every scalar loss pythae reports, by pythae's names ('loss', 'recon_loss', ...).
    recon: reconstructions pythae made in training mode (sampled latent).
    recon_index: rows of the batch that ``recon`` belongs to (factor_vae reconstructs a
        random half); None = all rows in order.
    z: the latent sample pythae decoded.
    updates: optimiser name -> whether to update it on this batch.
    raw: pythae's full ModelOutput.
    """

    loss: Tensor
    losses: dict[str, Tensor]
    recon: Tensor
    z: Tensor
    recon_index: Tensor | None = None
    updates: dict[str, bool] = field(default_factory=dict)
    raw: Any = None


def _encoder_kwargs(spec: ModelSpec, cfg: PythaeDriveConfig, mcfg) -> dict[str, Any]:
    kind = spec.encoder_kind
    if kind == "vae":
        return {"log_covariance": True}
    if kind == "svae":
        return {"log_concentration": True}
    if kind == "pvae":  # pythae reads log_concentration as the scale of a Riemannian-normal posterior
        riemannian = mcfg.posterior_distribution == "riemannian_normal"
        return {
            "log_covariance": not riemannian,
            "log_concentration": riemannian,
            "poincare_curvature": float(mcfg.curvature),
        }
    if kind == "vqvae":
        return {"vq_code_dim": cfg.vq_code_dim}
    return {}


class PythaeDrive(nn.Module):
    """A pythae model (``self.model``) with our encoder/decoder and the engine contract (module docstring)."""

    def __init__(self, config: PythaeDriveConfig):
        super().__init__()
        self.config = config
        self.spec = config.spec
        mcfg = config.pythae_config()
        if self.spec.networks is not None:  # a model with networks of its own (complex-valued)
            encoder, decoder, extra = self.spec.networks(config, mcfg)
        else:
            encoder, decoder, extra = self._networks(config, mcfg)
        with warnings.catch_warnings():
            for msg in _EXPECTED_WARNINGS:
                warnings.filterwarnings("ignore", message=msg)
            try:
                self.model = self.spec.model_cls(mcfg, encoder=encoder, decoder=decoder, **extra)
            except AssertionError as exc:  # pythae checks parameter ranges with assert
                raise PythaeDriveConfigError(f"invalid {self.spec.name} parameters: {exc}") from None
        self.recon_loss = config.elementwise_loss()  # None: pythae's own mse/bce
        self._specs = self._build_specs()

    def _networks(self, config: PythaeDriveConfig, mcfg):
        geo = Geometry(config.in_channels, tuple(config.input_shape), config.n_levels)
        encoder = Encoder(
            geo, config.nn, config.n_features, config.latent_dim, **_encoder_kwargs(self.spec, config, mcfg)
        )
        decoder = Decoder(geo, config.nn, config.n_features, config.latent_dim, config.decoder_activation)
        extra: dict[str, nn.Module] = {}
        if "image_discriminator" in self.spec.extra_nets:
            extra["discriminator"] = Discriminator(geo, config.nn, config.n_features)
        if "metric" in self.spec.extra_nets:
            extra["metric"] = Metric(geo, config.nn, config.n_features, config.latent_dim)
        return encoder, decoder, extra

    # ------------------------------------------------------------------ training
    @property
    def model_config(self):
        """The resolved pythae config of the model (pythae defaults < model_params)."""
        return self.model.model_config

    @property
    def is_multi_optimiser(self) -> bool:
        return self.spec.multi_optimiser

    @property
    def needs_grad_in_eval(self) -> bool:
        return self.spec.needs_autograd

    def _unpack(self, batch: Tensor | Mapping[str, Any]):
        if isinstance(batch, Tensor):
            return batch, None
        key = self.config.data_key
        if key not in batch:
            raise KeyError(f"batch has no image under {key!r} (data_key); keys: {sorted(batch)}")
        return batch[key], batch.get(self.config.mask_key)

    def _aux(self, batch: Tensor | Mapping[str, Any]) -> dict[str, Any]:
        """The batch entries besides the image that the model reads (``ModelSpec.aux_inputs``)."""
        if isinstance(batch, Tensor):
            return {}
        return {k: batch[k] for k in self.spec.aux_inputs if k in batch}

    def forward(
        self,
        batch: Tensor | Mapping[str, Any],
        epoch: int | None = None,
        dataset_size: int | None = None,
        **model_kwargs,
    ) -> DriveOutput:
        x, mask = self._unpack(batch)
        if self.spec.name == "rae_gp":  # pythae calls requires_grad_() on its input: give it its own leaf
            x = x.detach()
        if self.recon_loss is not None:
            if self.recon_loss.takes_mask and mask is None:
                raise ValueError(
                    f"reconstruction loss {self.recon_loss.name} needs a mask in the batch "
                    f"under {self.config.mask_key!r} (mask_key)"
                )
            data = ReconTarget.wrap(x, self.recon_loss, mask)
        else:
            data = x
        if epoch is not None:
            model_kwargs["epoch"] = epoch
        if dataset_size is not None:
            model_kwargs["dataset_size"] = dataset_size
        grad_ctx = nullcontext()
        if self.spec.needs_autograd and not torch.is_grad_enabled():
            if torch.is_inference_mode_enabled():
                raise RuntimeError(
                    f"{self.spec.name} calls autograd.grad in its forward pass and cannot run under "
                    "torch.inference_mode; use Trainer(inference_mode=False)"
                )
            grad_ctx = torch.enable_grad()
        with grad_ctx, warnings.catch_warnings():
            for msg in _STEP_WARNINGS:
                warnings.filterwarnings("ignore", message=msg)
            raw = self.model({"data": data, **self._aux(batch)}, **model_kwargs)
        losses = {k: v for k, v in raw.items() if k.endswith("loss") and isinstance(v, Tensor) and v.dim() == 0}
        updates = {p.name: bool(raw[p.update_flag]) if p.update_flag else True for p in self.spec.optimisers}
        return DriveOutput(
            loss=raw["loss"],
            losses=losses,
            recon=raw["recon_x"],
            z=raw["z"],
            recon_index=raw.get("recon_x_indices"),
            updates=updates,
            raw=raw,
        )

    def _build_specs(self) -> list[OptimiserSpec]:
        specs = []
        for plan in self.spec.optimisers:
            if not plan.modules:  # everything trainable in the drive (incl. a custom loss's own weights)
                groups = [{"params": [p for p in self.parameters() if p.requires_grad]}]
            else:
                options = plan.group_options(self.model_config) if plan.group_options else {}
                groups = []
                for mod in plan.modules:
                    params = [p for p in getattr(self.model, mod).parameters() if p.requires_grad]
                    if options:
                        groups.append({"params": params, **options.get(mod, {})})
                    elif groups:
                        groups[0]["params"] += params
                    else:
                        groups.append({"params": params})
            specs.append(OptimiserSpec(plan.name, groups, plan.loss))
        return specs

    def optimiser_specs(self) -> list[OptimiserSpec]:
        """One spec per optimiser, in the order the engine should create them."""
        return list(self._specs)

    def param_groups(self, optimiser: str | None = None) -> list[dict[str, Any]]:
        """torch param groups of ``optimiser`` (default: the only one)."""
        if optimiser is None:
            if len(self._specs) > 1:
                raise ValueError(
                    f"{self.spec.name} has several optimisers ({', '.join(s.name for s in self._specs)}); name one"
                )
            return self._specs[0].param_groups
        for s in self._specs:
            if s.name == optimiser:
                return s.param_groups
        raise ValueError(f"{self.spec.name} has no optimiser {optimiser!r}")

    def losses_for_step(self, output: DriveOutput) -> list[StepLoss]:
        """The loss each optimiser backpropagates on this batch, in ``optimiser_specs()`` order."""
        if not self.is_multi_optimiser:
            return [StepLoss(self._specs[0].name, output.loss, None, False)]
        steps = []
        for spec in self._specs:
            loss = output.raw[spec.loss_key] if output.updates.get(spec.name, True) else None
            steps.append(StepLoss(spec.name, loss, spec.params, True))
        live = [s for s in steps if s.loss is not None]
        if live:
            live[-1].retain_graph = False
        return steps

    def on_train_epoch_end(self) -> None:
        """pythae's end-of-epoch ``model.update()`` (rhvae: freeze the metric; others: nothing)."""
        self.model.update()

    # ----------------------------------------------------------------- inference
    def _unwrap_input(self, x: Tensor | Mapping[str, Any]) -> Tensor:
        return self._unpack(x)[0] if not isinstance(x, Tensor) else x

    def _quantise(self, emb: Tensor) -> Tensor:
        """vqvae: the quantised embedding in the layout pythae's decoder input has."""
        flat = emb.dim() == 2
        e = emb.reshape(emb.shape[0], 1, 1, -1) if flat else emb
        quantizer = self.model.quantizer
        was_training = quantizer.training
        quantizer.eval()  # embedding must not move the EMA codebook
        try:
            q = quantizer(e.permute(0, 2, 3, 1)).quantized_vector
        finally:
            quantizer.train(was_training)
        return q.reshape(q.shape[0], -1) if flat else q

    def _posterior_mean(self, x: Tensor) -> Tensor:
        out = self.model.encoder(x)
        emb = out["embedding"]
        if self.spec.name == "svae":
            emb = emb / emb.norm(dim=-1, keepdim=True)
        return emb

    def embed(self, x: Tensor | Mapping[str, Any]) -> Tensor:
        """(B, latent_dim) latent: posterior mean / embedding; vqvae: quantised code, flattened."""
        x = self._unwrap_input(x)
        emb = self._posterior_mean(x)
        if self.spec.name == "vqvae":
            q = self._quantise(emb)
            return q if q.dim() == 2 else tokens_to_flat(q)
        return emb.reshape(emb.shape[0], -1)

    def _through_flow(self, z: Tensor) -> Tensor:
        """Flow models decode f(z0); the flow is deterministic given z0."""
        if self.spec.name == "vae_iaf":
            return self.model.iaf_flow.inverse(z).out
        if self.spec.name == "vae_lin_nf":
            for layer in self.model.net:
                z = layer(z).out
        return z

    def reconstruct(self, x: Tensor | Mapping[str, Any]) -> Tensor:
        """Deterministic reconstruction, same shape as the input image: the decoder of ``embed(x)``."""
        return self.decode(self.embed(x))

    def decode(self, z: Tensor) -> Tensor:
        """Decode latents as returned by ``embed`` (B, latent_dim) to images."""
        # our decoder takes the flattened vqvae code as it is (tokens_to_flat is its own input layout)
        return self.model.decoder(self._through_flow(z))["reconstruction"]
