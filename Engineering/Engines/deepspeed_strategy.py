"""DeepSpeed ZeRO (Rajbhandari et al., SC 2020) through Lightning, on CUDA and on CPU.

On CUDA, Lightning's ``DeepSpeedStrategy`` is used unchanged. It refuses other accelerators, but DeepSpeed
itself runs on CPU over gloo: ``CPUDeepSpeedStrategy`` lifts the three CUDA assumptions (the accelerator check,
the device-index validation, and the device rank it hands to ``deepspeed.initialize``, which is ``None`` on
CPU). That is what lets CI train our models under ZeRO-1/2/3 with two CPU processes.

Gradient clipping and accumulation are DeepSpeed's: Lightning writes ``gradient_clipping`` and
``gradient_accumulation_steps`` into the DeepSpeed config from the Trainer's ``gradient_clip_val`` and
``accumulate_grad_batches`` (our ``effective_batch_size`` keeps its meaning: samples per optimiser step over
all devices); nothing here clips partitioned gradients.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from lightning.fabric.utilities.seed import reset_seed
from lightning.pytorch.strategies import DDPStrategy, DeepSpeedStrategy

from Engineering.config import Config
from Engineering.errors import UserError
from Engineering.io.checkpoints import deepspeed_safe_load

STAGES = {
    "deepspeed": dict(stage=2),
    "deepspeed_stage_1": dict(stage=1),
    "deepspeed_stage_2": dict(stage=2),
    "deepspeed_stage_2_offload": dict(stage=2, offload_optimizer=True),
    "deepspeed_stage_3": dict(stage=3),
    "deepspeed_stage_3_offload": dict(stage=3, offload_optimizer=True, offload_parameters=True),
}

ONE_OPTIMISER = "DeepSpeed supports one optimiser; use --training_strategy ddp"


class SafeDeepSpeedStrategy(DeepSpeedStrategy):
    """Lightning's DeepSpeed strategy whose checkpoint loading unpickles nothing (tensors and DeepSpeed's three
    named state classes only: ``deepspeed_safe_load``)."""

    def load_checkpoint(self, checkpoint_path, weights_only=None):
        with deepspeed_safe_load():
            return super().load_checkpoint(checkpoint_path, weights_only)


class CPUDeepSpeedStrategy(SafeDeepSpeedStrategy):
    """Lightning's DeepSpeed strategy without its CUDA-only checks, for CPU processes (gloo)."""

    def setup_environment(self) -> None:
        DDPStrategy.setup_environment(self)  # the parent's parent: no CUDA check

    def setup_distributed(self) -> None:
        reset_seed()
        self.set_world_ranks()
        self._init_deepspeed_distributed()

    def _setup_model_and_optimizer(self, model, optimizer, lr_scheduler=None):
        import deepspeed

        engine, ds_optimizer, _, _ = deepspeed.initialize(
            args=argparse.Namespace(device_rank=self.local_rank),
            config=self.config,
            model=model,
            model_parameters=[p for p in model.parameters() if p.requires_grad],
            optimizer=optimizer,
            lr_scheduler=lr_scheduler,
            dist_init_required=False,
        )
        return engine, ds_optimizer

    def _initialize_deepspeed_inference(self, model) -> None:
        raise UserError(
            "the test phase of a DeepSpeed run on CPU runs without DeepSpeed (see "
            "docs/how-to/multi-gpu.md); this code path should not be reached"
        )


def is_deepspeed(name: str) -> bool:
    return str(name).startswith("deepspeed")


def read_deepspeed_config(ref) -> dict:
    """The --deepspeed_config file as a dict, checked here: Lightning and DeepSpeed read it deep inside the
    Trainer (bad JSON, a list, ZeRO stage 7 were tracebacks there, after the run folder was made)."""
    path = Path(ref).expanduser()
    if not path.is_file():
        raise UserError(f"--deepspeed_config: no such file {path}")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, OSError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise UserError(f"--deepspeed_config {path} is not readable JSON: {str(exc).splitlines()[0]}") from None
    if not isinstance(config, dict):
        raise UserError(
            f"--deepspeed_config {path} holds a {type(config).__name__}, not a JSON object of DeepSpeed settings"
        )
    zero = config.get("zero_optimization", {})
    if not isinstance(zero, dict):
        raise UserError(f"--deepspeed_config {path}: zero_optimization is {zero!r}, not an object")
    if zero:
        from deepspeed.runtime.zero.config import DeepSpeedZeroConfig  # DeepSpeed's own rules for the section

        try:
            DeepSpeedZeroConfig(**zero)
        except (ValueError, TypeError) as exc:  # pydantic's ValidationError is a ValueError
            detail = " ".join(str(exc).split("\n")[1:3]).strip() or str(exc)
            raise UserError(
                f"--deepspeed_config {path}: zero_optimization is not valid: {' '.join(detail.split())}"
            ) from None
    return config


def build_strategy(cfg: Config, accelerator: str, automatic: bool):
    """The DeepSpeed strategy of ``--training_strategy`` (and ``--deepspeed_config``) for this accelerator."""
    name = cfg.run.training_strategy
    if not automatic:
        raise UserError(f"--training_strategy {name}: this model trains with several optimisers; {ONE_OPTIMISER}")
    if accelerator not in ("cpu", "gpu", "cuda"):
        raise UserError(f"--training_strategy {name} runs on CUDA GPUs or on CPU, not on --accelerator {accelerator}")
    kwargs = dict(STAGES[name])
    if cfg.run.deepspeed_config:
        kwargs = {"config": read_deepspeed_config(cfg.run.deepspeed_config)}
    if accelerator == "cpu":
        # DeepSpeed JIT-builds its CPU ops once per machine: keep that cache out of the repository
        os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache" / "torch_extensions"))
        return CPUDeepSpeedStrategy(process_group_backend="gloo", **kwargs)
    return SafeDeepSpeedStrategy(**kwargs)
