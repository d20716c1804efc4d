"""What every latent-model engine shares: ``embed``, the test phase that writes the output contract, and three
small mixins it composes: the EMA (EMAMixin), the exact-resume RNG state (ResumableRNGMixin) and the optimiser and
scheduler from the config (ConfiguredOptimiserMixin).

A subclass provides ``embed(x, use_ema)``; what else it can do (reconstruct, decode, render, pose) it declares by
defining the methods of Engines/capabilities.py, and the test phase writes reconstructions only for an engine that
``Reconstructs``. ``test_step`` returns one record per batch; the OutputWriter callback (Engines/output_writer.py)
writes the output contract, under DDP from every rank's share.
"""

from __future__ import annotations

import contextlib
import copy
import random

import lightning as L
import numpy as np
import torch
from lightning.pytorch.strategies import DeepSpeedStrategy

from Engineering.config import Config
from Engineering.config.flags import Flag
from Engineering.Engines.capabilities import Reconstructs, reconstruction_and_code
from Engineering.Engines.output_writer import test_record
from Engineering.errors import UserError
from Engineering.Science.optimisers import make_optimiser, make_scheduler


def _deepspeed_engine_of(module):
    """The DeepSpeed engine training ``module`` (None before it exists), or False when not under DeepSpeed."""
    trainer = module._trainer
    if trainer is None or not isinstance(trainer.strategy, DeepSpeedStrategy):
        return False
    engine = trainer.strategy.model
    return engine if hasattr(engine, "global_steps") else None


def _gathered(strategy, params):
    """ZeRO-3 partitions the parameters: gather them (every rank takes part) for the EMA update."""
    if isinstance(strategy, DeepSpeedStrategy) and strategy.zero_stage_3:
        import deepspeed

        return deepspeed.zero.GatheredParameters(params)
    return contextlib.nullcontext()


def ema_decay_at(step: int, decay: float, warmup: bool = True) -> float:
    """EMA warm-up (decay grows as (1+n)/(10+n)) so short runs do not test near-initial weights; without it
    the fixed decay of DiffAE's and the ancestor's training."""
    return min(decay, (1.0 + step) / (10.0 + step)) if warmup else decay


def use_ema_flag(group: str):
    """--use_ema of an engine that keeps its EMA only when asked (``init_ema``); one text for every task."""
    return Flag(
        "use_ema",
        ("training", "use_ema"),
        "bool",
        False,
        "Keep an EMA of the trained weights (training§ema_decay, warm-up training§ema_warmup); validation, "
        "the best checkpoint and the outputs use it with --test_ema.",
        group,
    )


class EMAMixin:
    """An EMA of the submodule ``net`` in ``ema_net`` (``init_ema``), updated once per optimiser step with the
    decay ``ema_decay`` (warm-up ``ema_warmup``); under DeepSpeed it stays fp32 outside the engine's module."""

    ema_decay: float
    ema_warmup: bool

    def init_ema(self) -> None:
        self.ema_net = copy.deepcopy(self.net)
        self.ema_net.requires_grad_(False)
        self.ema_net.eval()

    @torch.no_grad()
    def update_ema(self, step: int | None = None) -> None:
        decay = ema_decay_at(self.global_step if step is None else step, self.ema_decay, self.ema_warmup)
        params = list(self.net.parameters())
        with _gathered(self.trainer.strategy if self._trainer is not None else None, params):
            for e, p in zip(self.ema_net.parameters(), params):
                e.lerp_(p.detach().to(e.dtype), 1.0 - decay)
        for e, b in zip(self.ema_net.buffers(), self.net.buffers()):
            e.copy_(b)

    # --- DeepSpeed: the EMA copy stays fp32 and outside the engine's module (no bf16 cast, no ZeRO-3 partition)
    def setup(self, stage: str) -> None:
        if _deepspeed_engine_of(self) is not False and "ema_net" in self._modules:
            ema = self._modules.pop("ema_net").float()
            self.__dict__["ema_net"] = ema.to(self.trainer.strategy.root_device)

    def ema_outside(self) -> bool:
        return "ema_net" in self.__dict__

    def optimizer_step(self, *args, **kwargs):
        engine = _deepspeed_engine_of(self)
        before = engine.global_steps if engine else None
        super().optimizer_step(*args, **kwargs)
        if hasattr(self, "ema_net"):
            if not engine:
                self.update_ema()  # once per optimiser step: gradient accumulation is respected
            elif engine.global_steps != before:
                # DeepSpeed owns accumulation: Lightning calls this hook on every micro-batch, the engine steps
                # only at the accumulation boundary; the decay takes the steps before this one, as above
                self.update_ema(engine.global_steps - 1)

    def save_ema_state(self, checkpoint: dict) -> None:
        if self.ema_outside():  # DeepSpeed saves the module's weights itself; the EMA travels as client state
            checkpoint["ema_state_dict"] = {
                f"ema_net.{k}": v.detach().cpu() for k, v in self.ema_net.state_dict().items()
            }

    def load_ema_state(self, checkpoint: dict) -> None:
        if self.ema_outside() and "ema_state_dict" in checkpoint:
            prefix = len("ema_net.")
            self.ema_net.load_state_dict({k[prefix:]: v for k, v in checkpoint["ema_state_dict"].items()})


class ResumableRNGMixin:
    """Exact resume: the global RNGs (dropout etc.) travel with the checkpoint (``rng_states``)."""

    @staticmethod
    def save_rng_state(checkpoint: dict) -> None:
        checkpoint["rng_states"] = {
            "torch": torch.get_rng_state(),
            # every CUDA generator too: a GPU resume with --non_deter false is exact
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "python": list(random.getstate()[1]),
            "python_version": random.getstate()[0],
            "python_gauss": random.getstate()[2],
            "numpy": np.random.get_state()[1].tolist(),
            "numpy_pos": int(np.random.get_state()[2]),
        }

    @staticmethod
    def restore_rng_state(checkpoint: dict) -> None:
        rng = checkpoint.get("rng_states")
        if rng:
            torch.set_rng_state(rng["torch"])
            cuda = rng.get("cuda") or []
            if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
                torch.cuda.set_rng_state_all(cuda)
            random.setstate((rng["python_version"], tuple(rng["python"]), rng["python_gauss"]))
            np.random.set_state(("MT19937", np.array(rng["numpy"], dtype=np.uint32), rng["numpy_pos"], 0, 0.0))


class ConfiguredOptimiserMixin:
    """The optimiser (training§optimiserID at ``lr``) and scheduler of the config, over the trained parameters
    (not the EMA's); the scheduler monitors ``val_loss``, or ``monitor_train`` without validation."""

    monitor_train = "train_loss_epoch"

    def monitor(self) -> str:
        return "val_loss" if self.has_val else self.monitor_train

    def configure_optimizers(self):
        t = self.cfg.training
        params = [p for n, p in self.named_parameters() if p.requires_grad and not n.startswith("ema_net.")]
        opt = make_optimiser(params, t.optimiserID, self.lr)
        sched = make_scheduler(opt, t, self.monitor())
        return opt if sched is None else {"optimizer": opt, "lr_scheduler": sched}


class LatentEngine(EMAMixin, ResumableRNGMixin, ConfiguredOptimiserMixin, L.LightningModule):
    input_kind = "image"  # what a sample is: "image" (C, *S) or "points" (F, N); the benchmark rotates each its way

    def __init__(self, cfg: Config, in_channels: int):
        super().__init__()
        self.cfg = cfg
        self.in_channels = in_channels
        self.has_val = True
        self.lr = cfg.training.lr  # the Lightning Tuner's lr_find sets this
        self.ema_decay = float(cfg.training.ema_decay)  # in [0, 1): checked by the config schema
        self.ema_warmup = bool(cfg.training.ema_warmup)

    # --- subclasses: embed, and the methods of the capabilities they have (Engines/capabilities.py)
    def embed(self, x: torch.Tensor, use_ema: bool) -> torch.Tensor:
        """(B, latent_dim) latents of x."""
        raise NotImplementedError(f"{type(self).__name__} does not define embed(x, use_ema): every engine must")

    def checkpointable(self) -> list:
        """Modules with an ``activation_checkpointing`` switch (--activation_checkpointing)."""
        return []

    def use_activation_checkpointing(self, on: bool) -> None:
        if on and not self.checkpointable():
            raise UserError(
                f"--activation_checkpointing: the {type(self).__name__} has no checkpointed blocks (the DiffAE has)"
            )
        for module in self.checkpointable():
            module.activation_checkpointing = on

    # --- checkpoints: the RNGs, the resolved config and channels (a saved run is rebuilt from them), the EMA
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        self.save_rng_state(checkpoint)
        checkpoint["imlatent_config"] = self.cfg.model_dump(mode="json", by_alias=True)
        checkpoint["in_channels"] = self.in_channels
        self.save_ema_state(checkpoint)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.load_ema_state(checkpoint)
        self.restore_rng_state(checkpoint)

    def load_run_state(self, checkpoint: dict) -> None:
        """State beyond the weights that a test needs from the checkpoint it loads (IP-IRM: its partitions)."""

    # --- test phase: one record per batch; the OutputWriter callback writes the output contract
    @torch.no_grad()
    def test_step(self, batch, batch_idx):
        use_ema = bool(self.cfg.eval.test_ema) and hasattr(self, "ema_net")
        x = batch["inp"]
        z = self.embed(x, use_ema)
        if self.cfg.eval.test_emb_only:
            return test_record(batch["index"], z)
        if not isinstance(self, Reconstructs):  # the tasks of such engines fix --test_emb_only: a plug-in's guard
            raise UserError(
                f"the {type(self).__name__} does not reconstruct: it writes embeddings only (--test_emb_only)"
            )
        recon, code = reconstruction_and_code(self, x, z, use_ema)
        return test_record(batch["index"], z, batch, recon, code)
