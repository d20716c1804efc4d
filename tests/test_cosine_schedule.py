"""--lr_decay_type 3: the cosine schedule reaches training§LRDecay§type3§min_lr at the last epoch, as its help says
(issue 33: it used to stop one cosine step short, at lr_min + (lr - lr_min) (1 + cos(pi (E-1-w)/(E-w))) / 2)."""

from __future__ import annotations

import math

import pytest
import torch

from Engineering.Science.optimisers import cosine_with_warmup


def _epoch_lrs(epochs: int, warmup: int, lr: float, min_lr: float) -> list[float]:
    """The learning rate each trained epoch runs at (the scheduler steps once per epoch, after it)."""
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    sched = cosine_with_warmup(opt, epochs, warmup, min_lr)
    out = []
    for _ in range(epochs):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


@pytest.mark.parametrize(
    "epochs,warmup,min_lr", [(10, 0, 0.0), (10, 1, 1e-5), (8, 3, 1e-4), (2, 0, 1e-4), (400, 10, 1e-6)]
)
def test_last_epoch_runs_at_min_lr_and_first_cosine_epoch_at_lr(epochs, warmup, min_lr):
    lr = 1e-3
    lrs = _epoch_lrs(epochs, warmup, lr, min_lr)
    assert lrs[-1] == pytest.approx(min_lr, abs=1e-15)
    assert lrs[warmup] == pytest.approx(lr)
    # the formula, written out: warm-up from lr/10, then half a cosine over the epochs - 1 - warmup steps
    span = epochs - 1 - warmup
    for e, got in enumerate(lrs):
        want = (
            lr * (0.1 + 0.9 * e / warmup)
            if e < warmup
            else min_lr + (lr - min_lr) * 0.5 * (1 + math.cos(math.pi * (e - warmup) / span))
        )
        assert got == pytest.approx(want, rel=1e-9, abs=1e-15)
    post = lrs[warmup:]
    assert all(a >= b for a, b in zip(post, post[1:]))  # never rises after the warm-up


def test_single_epoch_after_warmup_runs_at_lr():
    assert _epoch_lrs(1, 0, 1e-3, 0.0) == [pytest.approx(1e-3)]
    assert _epoch_lrs(3, 2, 1e-3, 0.0)[-1] == pytest.approx(1e-3)
