"""--bn_eval_mode as a Lightning callback: every validation/test batch of every task runs with the chosen
BatchNorm statistics (Science/batchnorm.py); one implementation, not per model."""
from __future__ import annotations

import lightning as L
import torch

from Engineering.Science.batchnorm import batch_statistics, batchnorm_layers, fixed_statistics, group_statistics


class BNPolicy(L.Callback):
    """``batch``: each batch's own statistics. ``group``: the statistics of the batch's whole group (the
    evaluation loaders yield a group's chunks in a row, data/group_batches.GroupChunks), computed once when a
    group starts, through the engine's ``embed`` (the encoder path that gives the latents)."""

    def __init__(self, mode: str):
        self.mode, self._ctx, self._group, self._stats = mode, None, None, None

    def _start(self, trainer, pl_module, batch, loaders) -> None:
        if not batchnorm_layers(pl_module):
            return
        if self.mode == "batch":
            self._ctx = batch_statistics(pl_module)
        else:
            loader = loaders[0] if isinstance(loaders, (list, tuple)) else loaders
            chunks = loader.batch_sampler
            first = int(batch["index"][0])
            group = next(g for c, g in zip(chunks.chunks, chunks.chunk_groups) if first in c)
            if group != self._group:
                self._group, self._stats = group, self._group_stats(trainer, pl_module, loader, group)
            self._ctx = fixed_statistics(pl_module, self._stats)
        self._ctx.__enter__()

    @torch.no_grad()
    def _group_stats(self, trainer, pl_module, loader, group: int):
        chunks = loader.batch_sampler
        ds, collate = loader.dataset, loader.collate_fn
        use_ema = bool(pl_module.cfg.eval.test_ema) and hasattr(pl_module, "ema_net")

        def batches():
            for idx, g in zip(chunks.chunks, chunks.chunk_groups):
                if g == group:
                    b = trainer.strategy.batch_to_device(collate([ds[i] for i in idx]))
                    yield trainer.datamodule.on_after_batch_transfer(b, 0)["inp"]
        return group_statistics(pl_module, lambda x: pl_module.embed(x, use_ema), batches)

    def _end(self) -> None:
        if self._ctx is not None:
            self._ctx.__exit__(None, None, None)
            self._ctx = None

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        self._start(trainer, pl_module, batch, trainer.val_dataloaders)

    def on_test_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        self._start(trainer, pl_module, batch, trainer.test_dataloaders)

    def on_validation_batch_end(self, *args, **kwargs):
        self._end()

    def on_test_batch_end(self, *args, **kwargs):
        self._end()

    def on_validation_epoch_start(self, trainer, pl_module):
        self._group = None  # the weights changed since the last evaluation

    def on_test_epoch_start(self, trainer, pl_module):
        self._group = None
