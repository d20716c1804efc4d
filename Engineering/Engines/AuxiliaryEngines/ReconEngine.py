"""Lightning engine of the pythae WarpDrive (Chadebec et al., NeurIPS 2022): every pythae AE/VAE.

Single-optimiser models use Lightning's automatic optimisation. Multi-optimiser
models (factor_vae, aae, vaegan, piwae, ...) use manual optimisation following
the drive's contract (see WarpDrives/pythaeDrive/drive.py), with gradient
accumulation and clipping done here, since Lightning leaves both to the engine
under manual optimisation.
"""
from __future__ import annotations

from typing import Any, Optional

import torch
from pydantic import Field, create_model

from Engineering.config import honour
from Engineering.config.flags import Flag
from Engineering.config.schema import Keys, keys_from_dataclass
from Engineering.errors import UserError
from Engineering.Engines.AuxiliaryEngines.LatentEngine import LatentEngine, use_ema_flag
from Engineering.Engines.AuxiliaryEngines.pythae_json import merge_pythae_json
from Engineering.Engines.registry import CONFIGS, TaskSpec, register
from Engineering.Engines.WarpDrives.pythaeDrive import PythaeDrive, PythaeDriveConfig
from Engineering.Science.optimisers import accumulation_steps, make_optimiser, make_scheduler

# model§pythae: the drive's own config dataclass (its defaults and types) + which model, its parameters
PythaeKeys = keys_from_dataclass(
    "PythaeKeys", PythaeDriveConfig, doc="model§pythae",
    exclude=("is3D", "in_channels", "input_shape", "latent_dim", "model_params", "data_key", "mask_key"),
    overrides={"custom_loss_class": (Optional[str], None)},
    config_json=(str, Field("", description="--pythae_config: a JSON file of pythae model parameters (merged into "
                                            "models§<model> when the config is resolved).")),
    models=(dict[str, dict[str, Any]], Field({}, description="pythae parameters per model name, e.g. "
                                                              "beta_vae: {beta: 4.0}.")),
)
PythaeModelKeys = create_model("PythaeModelKeys", __base__=Keys, pythae=(PythaeKeys, PythaeKeys()))


def pythae_config(cfg, in_channels: int) -> PythaeDriveConfig:
    """Drive config from model§pythae§*; parameters = pythae defaults < YAML < --pythae_config < path overrides."""
    keys = cfg.model.pythae
    drive = {f: getattr(keys, f) for f in ("nn", "n_features", "n_levels", "reconstruction_loss", "custom_loss_class",
                                           "custom_loss_params", "output_activation", "vq_code_dim")}
    return PythaeDriveConfig(model=keys.model, is3D=cfg.model.is3D, in_channels=in_channels,
                             input_shape=tuple(cfg.model.input_shape), latent_dim=cfg.model.latent_dim,
                             model_params=dict(keys.models.get(keys.model) or {}), **drive)


class ReconEngine(LatentEngine):
    def __init__(self, cfg, in_channels: int):
        super().__init__(cfg, in_channels)
        self.drive_cfg = pythae_config(cfg, in_channels)
        self.net = PythaeDrive(self.drive_cfg)
        self.automatic_optimization = not self.net.is_multi_optimiser
        self.needs_grad_in_eval = self.net.needs_grad_in_eval
        self._touched: set[str] = set()
        self._ema_updates = 0  # EMA updates under manual optimisation (the warm-up's n)
        if cfg.training.use_ema:  # validated, embedded and decoded with the EMA when eval§test_ema (the default)
            if self.drive_cfg.model == "rhvae":
                raise UserError("--use_ema: rhvae's metric is state outside its weights (set from the training "
                                "passes at each epoch's end), which an average of the weights would not match")
            self.init_ema()

    def _train_size(self) -> int:
        return len(self.trainer.datamodule.dataset("train"))

    def training_step(self, batch, batch_idx):
        out = self.net(batch, epoch=self.current_epoch, dataset_size=self._train_size())
        bs = batch["inp"].shape[0]
        self.log("train_loss", out.loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=bs, sync_dist=True)
        for k, v in out.losses.items():
            if k != "loss":
                self.log(f"train_{k}", v, on_epoch=True, batch_size=bs, sync_dist=True)
        if self.automatic_optimization:
            return out.loss
        self._manual_step(out, batch_idx)
        return None

    def _manual_step(self, out, batch_idx: int) -> None:
        t = self.cfg.training
        accumulate = accumulation_steps(t, self.trainer.world_size)
        for step in self.net.losses_for_step(out):
            if step.loss is None:
                continue
            self.manual_backward(step.loss / accumulate, inputs=step.params, retain_graph=step.retain_graph)
            self._touched.add(step.optimiser)
        last = (batch_idx + 1) == self.trainer.num_training_batches
        if (batch_idx + 1) % accumulate == 0 or last:
            opts = self.optimizers()
            opts = opts if isinstance(opts, list) else [opts]
            for spec, opt in zip(self.net.optimiser_specs(), opts):
                if spec.name in self._touched:
                    opt.step()  # clipping happens in on_before_optimizer_step, after the AMP unscale
                opt.zero_grad()
            self._touched.clear()
            if hasattr(self, "ema_net"):  # Lightning's optimizer_step hook (LatentEngine's EMA) is automatic-only;
                # global_step counts every optimiser's steps here, so the warm-up counts updates itself
                self.update_ema(self._ema_updates)
                self._ema_updates += 1

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["ema_updates"] = self._ema_updates

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        self._ema_updates = int(checkpoint.get("ema_updates", 0))

    def on_before_optimizer_step(self, optimizer) -> None:
        # Under 16-mixed the gradients are still multiplied by the loss scale until Lightning's precision
        # plugin unscales them inside opt.step(), just before this hook: clipping earlier clips the scaled
        # gradients (up to 65536x too strongly). Automatic optimisation is clipped by the Trainer itself.
        t = self.cfg.training
        if not self.automatic_optimization and t.grad_clip_val:
            self.clip_gradients(optimizer, gradient_clip_val=t.grad_clip_val, gradient_clip_algorithm=t.grad_clip_algo)

    def on_train_epoch_end(self) -> None:
        self.net.on_train_epoch_end()
        if not self.automatic_optimization and self.cfg.training.lr_decay_type in (1, 3):  # per-epoch schedules
            scheds = self.lr_schedulers()
            for s in scheds if isinstance(scheds, list) else [scheds]:
                s.step()

    def on_validation_epoch_end(self) -> None:
        if not self.automatic_optimization and self.cfg.training.lr_decay_type == 2 and not self.trainer.sanity_checking:
            metric = self.trainer.callback_metrics.get(self.monitor())
            scheds = self.lr_schedulers()
            for s in scheds if isinstance(scheds, list) else [scheds]:
                if metric is not None:
                    s.step(metric)

    def validation_step(self, batch, batch_idx):
        # hvae/rhvae/rae_gp differentiate inside their forward: the trainer runs without inference_mode for them.
        with torch.enable_grad() if self.needs_grad_in_eval else torch.no_grad():
            # the same warm-up state as training (disentangled_beta_vae's KL target, vamp's warm-up)
            net = self._net(bool(self.cfg.eval.test_ema))
            out = net(batch, epoch=self.current_epoch, dataset_size=self._train_size())
        self.log("val_loss", out.loss.detach(), on_epoch=True, prog_bar=True, batch_size=batch["inp"].shape[0],
                 sync_dist=True)

    def configure_optimizers(self):
        # From the drive's param groups: they carry group options such as rae_l2's decoder weight decay.
        t = self.cfg.training
        optimisers, schedulers = [], []
        for spec in self.net.optimiser_specs():
            opt = make_optimiser(spec.param_groups, t.optimiserID, self.lr)
            optimisers.append(opt)
            sched = make_scheduler(opt, t, self.monitor())
            if sched is not None:
                schedulers.append(sched)
        if self.automatic_optimization:
            opt = optimisers[0]
            return {"optimizer": opt, "lr_scheduler": schedulers[0]} if schedulers else opt
        return (optimisers, schedulers) if schedulers else optimisers

    def _net(self, use_ema: bool) -> PythaeDrive:
        return self.ema_net if use_ema and hasattr(self, "ema_net") else self.net

    def embed(self, x, use_ema: bool) -> torch.Tensor:
        return self._net(use_ema).embed(x)

    def reconstruct(self, x, z, use_ema: bool) -> torch.Tensor:
        net = self._net(use_ema)
        return net.decode(z) if hasattr(net, "decode") else net.reconstruct(x)

    def decode(self, z, use_ema: bool):
        net = self._net(use_ema)
        return net.decode(z) if hasattr(net, "decode") else None


RECON_FLAGS = (
    Flag("pythae_model", ("model", "pythae", "model"), "str", "vae",
         "pythae model name (ae, vae, beta_vae, ..., vqvae); an unknown name lists the valid ones.", "Model"),
    Flag("pythae_config", ("model", "pythae", "config_json"), "str", "",
         "JSON file of pythae model parameters (above the YAML's models§<name>, below path overrides).", "Model"),
    use_ema_flag("Training"),
)

register(TaskSpec(
    name="recon", description="pythae autoencoders and VAEs (Chadebec et al., NeurIPS 2022), 2D and 3D.",
    configyml=str(CONFIGS / "config_recon.yaml"), datajson=str(CONFIGS / "dataNpath_demo.json"),
    defaults={"input_shape": [64, 64], "latent_dim": 16, "batch_size": 32, "num_epochs": 3, "lr": 1e-3,
              "model§drive": "pythae", "model§tag": "recon"},
    extra_flags=RECON_FLAGS, sections={"model": PythaeModelKeys}, flag_layer=merge_pythae_json, drive="pythae", engine=ReconEngine, module=__name__,
    honours=honour.STANDARD, conditions=honour.EMA_WITH_USE_EMA,  # (GroupNorm: no BatchNorm to set at evaluation)
    run_name_parts=lambda cfg: [f"pythaemodel-{cfg.model.pythae.model}"],  # the ancestor's run-name part
))
