"""Callbacks every run's Trainer carries so that a run never ends silently wrong or silently stopped.

- ``FiniteLoss``: a non-finite training loss (a diverged run, NaN inputs or weights) stops training at that step
  with one line naming the loss, the epoch and the step, before the optimiser has spread it to every weight and
  before last.ckpt holds it (Lightning's ``detect_anomaly`` finds the op but costs a backward trace per step).
- ``StopCheckpoint``: a run stopped by SIGTERM (``timeout``, ``scancel``, ``docker stop``, a SLURM time limit)
  ends its current batch (Lightning's own SIGTERM handling), then saves its whole state as ``last.ckpt`` so that
  the same command with ``--resume`` continues; ``Engineering.errors.run_cli`` then exits with 143 and says so.
"""

from __future__ import annotations

import math
from pathlib import Path

import lightning as L
import torch

from Engineering.errors import UserError, note_resume


def _losses(outputs, logged: dict) -> dict[str, torch.Tensor]:
    """The loss tensors a training step returned (a tensor, or a dict whose tensors are losses) and the training
    loss terms it logged."""
    found = {}
    if isinstance(outputs, torch.Tensor):
        found["loss"] = outputs
    elif isinstance(outputs, dict):
        found.update((k, v) for k, v in outputs.items() if isinstance(v, torch.Tensor))
    for name, value in logged.items():
        if name.startswith("train") and "loss" in name and isinstance(value, torch.Tensor):
            found.setdefault(name, value)
    return {k: v.detach() for k, v in found.items() if v.numel() == 1}


class FiniteLoss(L.Callback):
    """Stop at the first non-finite training loss: the returned loss, and every logged loss term (engines with
    manual optimisation, such as the GANs, return nothing and log their terms)."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        losses = _losses(outputs, trainer.callback_metrics)
        if not losses:
            return
        # one device synchronisation per step (a float() per term would be one each on a GPU)
        finite = [torch.isfinite(v).reshape(()) for v in losses.values()]
        if bool(torch.stack([f.to(finite[0].device) for f in finite]).all()):
            return
        terms = ", ".join(f"{k} = {float(v)}" for k, v in sorted(losses.items()) if not math.isfinite(float(v)))
        raise UserError(
            f"non-finite training loss ({terms}) at epoch {trainer.current_epoch}, step "
            f"{trainer.global_step} (batch {batch_idx}): training diverged or the inputs/weights hold "
            "NaN; lower --lr, clip gradients (--grad_clip_val) or check the data (validate_h5); "
            "last.ckpt keeps the last finite epoch"
        )


class StopCheckpoint(L.Callback):
    """On SIGTERM during training: save the state at the end of the batch Lightning finished, as last.ckpt."""

    def __init__(self, ckpt_dir: Path):
        super().__init__()
        self.ckpt_dir = Path(ckpt_dir)

    def on_exception(self, trainer, pl_module, exception) -> None:
        if not getattr(trainer, "received_sigterm", False):
            return
        if trainer.state.fn != "fit":
            note_resume(
                "the samples tested so far are kept; rerun the same command to continue the test where it stopped"
            )
            return
        path = self.ckpt_dir / "last.ckpt"
        trainer.save_checkpoint(path)
        note_resume(
            f"the training state at epoch {trainer.current_epoch}, step {trainer.global_step} is saved in "
            f"{path}: rerun the same command with --resume to continue"
        )
