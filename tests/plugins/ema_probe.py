"""A test plug-in: the diffAE task, recording the network's weights after every training batch (gathered under
ZeRO-3, on every rank) so that a test can recompute the EMA independently. Rank 0 writes the initial weights and
one record per micro-batch to $EMA_LOG (torch.save of a list of state dicts). Registered as ``diffae_ema``."""

from __future__ import annotations

import contextlib
import dataclasses
import os

import torch

from Engineering.Engines import registry
from Engineering.Engines.WarpDrives.DiffAE.engine import DiffAEEngine


class EMAProbe(DiffAEEngine):
    def _snapshot(self) -> dict:
        params = dict(self.net.named_parameters())
        strategy = self.trainer.strategy
        gather = contextlib.nullcontext()
        if getattr(strategy, "zero_stage_3", False):
            import deepspeed

            gather = deepspeed.zero.GatheredParameters(list(params.values()))
        with gather:
            return {k: v.detach().float().cpu().clone() for k, v in params.items()}

    def on_train_start(self) -> None:
        self._records = [self._snapshot()]

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        self._records.append(self._snapshot())

    def on_train_end(self) -> None:
        if self.trainer.is_global_zero:
            torch.save(self._records, os.environ["EMA_LOG"])


registry.register(dataclasses.replace(registry.get("diffAE"), name="diffae_ema", engine=EMAProbe, module=__name__))
