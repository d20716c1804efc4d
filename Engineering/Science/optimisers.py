"""Optimisers and learning-rate schedules from the config (training section)."""
from __future__ import annotations

import torch

from Engineering.errors import UserError


def make_optimiser(params, name: str, lr: float) -> torch.optim.Optimizer:
    """``name`` is any torch.optim class (Adam, AdamW, RAdam, SGD, ...), matched case-insensitively."""
    classes = {n.lower(): getattr(torch.optim, n) for n in dir(torch.optim)
               if isinstance(getattr(torch.optim, n), type) and issubclass(getattr(torch.optim, n), torch.optim.Optimizer)
               and n != "Optimizer"}
    cls = classes.get(name.lower())
    if cls is None:
        raise UserError(f"--optimiserID {name!r} is not a torch.optim optimiser; choose one of "
                        f"{', '.join(sorted(c.__name__ for c in classes.values()))}")
    return cls(params, lr=lr)


def make_scheduler(optimiser, training_cfg, monitor: str) -> dict | None:
    """lr_decay_type 0 none, 1 StepLR (every ``decay_every`` epochs by ``decay_rate``), 2 ReduceLROnPlateau."""
    kind = training_cfg.lr_decay_type
    if kind == 0:
        return None
    params = (getattr(training_cfg, "LRDecay", None) or {}).get(f"type{kind}", {})
    try:
        if kind == 1:
            sched = torch.optim.lr_scheduler.StepLR(optimiser, step_size=int(params.get("decay_every", 50)),
                                                    gamma=float(params.get("decay_rate", 0.1)))
            return {"scheduler": sched, "interval": "epoch"}
        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimiser, mode="min", factor=float(params.get("decay_rate", 0.1)), patience=int(params.get("patience", 10)),
            threshold=float(params.get("threshold", 1e-4)), cooldown=int(params.get("cooldown", 0)),
            min_lr=float(params.get("min_lr", 0.0)))
        return {"scheduler": sched, "interval": "epoch", "monitor": monitor}
    except (TypeError, ValueError) as exc:
        raise UserError(f"training§LRDecay§type{kind}: {exc}") from None


def accumulation_steps(training_cfg, world_size: int) -> int:
    """Batches per optimiser step so that effective_batch_size samples make one step (0 = no accumulation)."""
    eff, bs = training_cfg.effective_batch_size, training_cfg.batch_size
    return max(1, eff // (bs * max(1, world_size))) if eff else 1
