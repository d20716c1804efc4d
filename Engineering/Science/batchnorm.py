"""Which statistics BatchNorm normalises with at evaluation: running buffers, the batch's, or a whole group's.

Batch Effects Normalization (Lin & Lu, MLCB 2022) trains on group-pure batches (one plate, site or scanner per
batch) so that BatchNorm's batch statistics absorb that group's technical effects, and evaluates the same way:

- ``running``: the usual eval mode (running mean/var learnt in training);
- ``batch``: each evaluation batch's own statistics (a batch is one group, see ``data/group_batches.py``);
- ``group``: the statistics of the whole group, accumulated over all its chunks (so a large plate needs no
  large batch): layer by layer, each layer's mean and variance over the group given the group statistics of
  the layers before it; this equals one forward pass over the whole group in ``batch`` mode.

The running buffers are never touched at evaluation in any mode. One implementation for every model: it
replaces the forward of every ``_BatchNorm`` layer for the duration of a ``with`` block.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

BN_EVAL_MODES = ("running", "batch", "group")


def batchnorm_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def _reduce_dims(x: torch.Tensor) -> list[int]:
    return [0] + list(range(2, x.ndim))


class _Stats:
    """Per-channel sums over every element a layer sees (float64: a group may be large)."""

    def __init__(self):
        self.n, self.s, self.ss = 0, None, None

    def add(self, x: torch.Tensor) -> None:
        dims = _reduce_dims(x)
        xd = x.detach().double()
        s, ss = xd.sum(dims), (xd * xd).sum(dims)
        self.s = s if self.s is None else self.s + s
        self.ss = ss if self.ss is None else self.ss + ss
        self.n += x.numel() // x.shape[1]

    def mean_var(self) -> tuple[torch.Tensor, torch.Tensor]:
        mean = self.s / self.n
        return mean, (self.ss / self.n - mean * mean).clamp_min(0.0)  # biased, as BatchNorm normalises


class _Stop(Exception):
    """Ends a statistics pass once the layer being measured has seen its input."""


def _normalise(bn, x, mean, var):
    if mean is None:  # a layer off the measured path: its batch's statistics
        return F.batch_norm(x, None, None, bn.weight, bn.bias, True, 0.0, bn.eps)
    shape = [1, -1] + [1] * (x.ndim - 2)
    y = (x - mean.to(x.dtype).reshape(shape)) * torch.rsqrt(var.to(x.dtype).reshape(shape) + bn.eps)
    if bn.affine:
        y = y * bn.weight.reshape(shape) + bn.bias.reshape(shape)
    return y


@contextmanager
def _forwards(layers, make: Callable) -> Iterator[None]:
    saved = [bn.forward for bn in layers]
    try:
        for k, bn in enumerate(layers):
            bn.forward = make(k, bn)
        yield
    finally:
        for bn, fwd in zip(layers, saved):
            bn.forward = fwd


@contextmanager
def batch_statistics(model: nn.Module) -> Iterator[None]:
    """Every BatchNorm layer normalises with the current batch's statistics; running buffers untouched."""

    def make(k, bn):
        return lambda x: F.batch_norm(x, None, None, bn.weight, bn.bias, True, 0.0, bn.eps)

    with _forwards(batchnorm_layers(model), make):
        yield


@torch.no_grad()
def group_statistics(
    model: nn.Module, run: Callable[[torch.Tensor], object], chunks: Callable[[], Iterable[torch.Tensor]]
) -> list[tuple]:
    """(mean, var) of every BatchNorm layer over all ``chunks()`` of one group: layer k is measured with the
    group statistics of layers < k (one pass per layer, each stopped at the layer measured). A layer that
    ``run`` never reaches (another branch, the EMA copy) gets (None, None): batch statistics."""
    layers = batchnorm_layers(model)
    stats: list[tuple[torch.Tensor, torch.Tensor]] = []
    for k in range(len(layers)):
        acc = _Stats()

        def make(j, bn, k=k, acc=acc):
            if j < k:
                return lambda x, j=j, bn=bn: _normalise(bn, x, *stats[j])

            def measure(x):
                acc.add(x)
                raise _Stop

            return measure if j == k else (lambda x: x)

        with _forwards(layers, make):
            for chunk in chunks():
                try:
                    run(chunk)
                except _Stop:
                    pass
        stats.append(acc.mean_var() if acc.n else (None, None))
    return stats


@contextmanager
def fixed_statistics(model: nn.Module, stats: list[tuple]) -> Iterator[None]:
    """Every BatchNorm layer normalises with the given (mean, var), e.g. a group's (``group_statistics``)."""
    layers = batchnorm_layers(model)
    if len(stats) != len(layers):
        raise ValueError(f"{len(stats)} statistics for {len(layers)} BatchNorm layers")
    with _forwards(layers, lambda k, bn: lambda x: _normalise(bn, x, *stats[k])):
        yield
