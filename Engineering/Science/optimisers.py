"""Optimisers and learning-rate schedules from the config (training section)."""

from __future__ import annotations

import math

import torch

from Engineering.errors import UserError


def make_optimiser(params, name: str, lr: float) -> torch.optim.Optimizer:
    """``name`` is any torch.optim class (Adam, AdamW, RAdam, SGD, ...), matched case-insensitively."""
    classes = {
        n.lower(): getattr(torch.optim, n)
        for n in dir(torch.optim)
        if isinstance(getattr(torch.optim, n), type)
        and issubclass(getattr(torch.optim, n), torch.optim.Optimizer)
        and n != "Optimizer"
    }
    cls = classes.get(name.lower())
    if cls is None:
        raise UserError(
            f"--optimiserID {name!r} is not a torch.optim optimiser; choose one of "
            f"{', '.join(sorted(c.__name__ for c in classes.values()))}"
        )
    return cls(params, lr=lr)


def make_scheduler(optimiser, training_cfg, monitor: str) -> dict | None:
    """lr_decay_type 0 none, 1 StepLR (every ``decay_every`` epochs by ``decay_rate``), 2 ReduceLROnPlateau, 3 cosine
    with warm-up."""
    kind = training_cfg.lr_decay_type
    if kind == 0:
        return None
    decay = training_cfg.LRDecay  # typed keys (config/schema.LRDecayKeys): checked when the config was resolved
    if kind == 1:
        p = decay.type1
        return {
            "scheduler": torch.optim.lr_scheduler.StepLR(optimiser, step_size=p.decay_every, gamma=p.decay_rate),
            "interval": "epoch",
        }
    if kind == 3:
        return {
            "scheduler": cosine_with_warmup(
                optimiser, training_cfg.num_epochs, decay.type3.warmup_epochs, decay.type3.min_lr
            ),
            "interval": "epoch",
        }
    p = decay.type2
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimiser,
        mode="min",
        factor=p.decay_rate,
        patience=p.patience,
        threshold=p.threshold,
        cooldown=p.cooldown,
        min_lr=p.min_lr,
    )
    return {"scheduler": sched, "interval": "epoch", "monitor": monitor}


def cosine_with_warmup(optimiser, epochs: int, warmup: int, min_lr: float):
    """Linear warm-up from lr/10 over ``warmup`` epochs, then cosine annealing from lr to ``min_lr``, which is the
    learning rate of the last epoch (epoch ``epochs - 1``; SGDR's schedule, Loshchilov & Hutter, ICLR 2017, without
    restarts). The cosine spans the ``epochs - 1 - warmup`` epoch steps after the warm-up, so that its end falls on
    an epoch that is trained (a span of ``epochs - warmup`` would end one step after training stops). With a
    single epoch after the warm-up there is no step to anneal over: that epoch runs at lr.

    One LambdaLR whose state is only the epoch count: a run resumed with a different --num_epochs (training
    longer) continues on the schedule of its new length, where chained schedulers would change type and refuse
    the saved state."""
    warmup = min(warmup, max(epochs - 1, 0))
    span = max(1, epochs - 1 - warmup)

    def factor(base_lr: float):
        floor = min_lr / base_lr if base_lr > 0 else 0.0

        def at(epoch: int) -> float:
            if epoch < warmup:
                return 0.1 + 0.9 * epoch / warmup
            t = min(epoch - warmup, span)
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t / span))

        return at

    return torch.optim.lr_scheduler.LambdaLR(optimiser, [factor(g["lr"]) for g in optimiser.param_groups])


def accumulation_steps(training_cfg, world_size: int) -> int:
    """Batches per optimiser step so that effective_batch_size samples make one step (0 = no accumulation)."""
    eff, bs = training_cfg.effective_batch_size, training_cfg.batch_size
    return max(1, eff // (bs * max(1, world_size))) if eff else 1
