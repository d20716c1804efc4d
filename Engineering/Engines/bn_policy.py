"""--bn_eval_mode as a Lightning callback: every validation/test batch of every task runs with the chosen
BatchNorm statistics (Science/batchnorm.py); one implementation, not per model."""

from __future__ import annotations

import lightning as L
import torch

from Engineering.data.datamodule import dataset_positions
from Engineering.errors import UserError
from Engineering.Science.batchnorm import batch_statistics, batchnorm_layers, fixed_statistics, group_statistics


class BNPolicy(L.Callback):
    """``batch``: each batch's own statistics. ``group``: the statistics of the batch's whole group (the
    evaluation loaders yield a group's chunks in a row, data/group_batches.GroupChunks), computed once when a
    group starts, through the engine's ``embed`` (the encoder path that gives the latents)."""

    def __init__(self, mode: str, controls: bool = False):
        self.mode, self.controls, self._ctx, self._group, self._stats = mode, controls, None, None, None

    def _run_fn(self, pl_module):
        use_ema = bool(pl_module.cfg.eval.test_ema) and hasattr(pl_module, "ema_net")
        return lambda x: pl_module.embed(x, use_ema)

    def _controls(self, trainer, loader, index) -> torch.Tensor:
        """The control samples among ``index`` (dataset positions of the evaluation loader's dataset)."""
        split = "test" if trainer.testing else "val"
        mask = trainer.datamodule.control_mask(split)
        return torch.as_tensor(mask[dataset_positions(loader.dataset, index)], dtype=torch.bool)

    def _start(self, trainer, pl_module, batch, loaders) -> None:
        if not batchnorm_layers(pl_module):
            return
        loader = loaders[0] if isinstance(loaders, (list, tuple)) else loaders
        if self.mode == "batch" and self.controls:  # this batch's control samples set the statistics
            keep = self._controls(trainer, loader, batch["index"].tolist()).to(batch["inp"].device)
            if not keep.any():
                raise UserError(
                    f"--bn_controls: an evaluation batch (samples {batch['index'][:3].tolist()}...) "
                    "holds no control sample"
                )
            stats = group_statistics(pl_module, self._run_fn(pl_module), lambda: [batch["inp"][keep]])
            self._ctx = fixed_statistics(pl_module, stats)
        elif self.mode == "batch":
            self._ctx = batch_statistics(pl_module)
        else:
            group = int(loader.batch_sampler.codes[int(batch["index"][0])])  # a chunk is one group
            if group != self._group:
                self._group, self._stats = group, self._group_stats(trainer, pl_module, loader, group)
            self._ctx = fixed_statistics(pl_module, self._stats)
        self._ctx.__enter__()

    @torch.no_grad()
    def _group_stats(self, trainer, pl_module, loader, group: int):
        chunks = loader.batch_sampler
        ds, collate = loader.dataset, loader.collate_fn
        members = [i for idx, g in zip(chunks.chunks, chunks.chunk_groups) if g == group for i in idx]
        if self.controls:
            members = [i for i, c in zip(members, self._controls(trainer, loader, members).tolist()) if c]
            if not members:
                raise UserError(
                    f"--bn_controls: group {trainer.datamodule.group_names[group]!r} holds no control sample"
                )
        size = max(len(c) for c in chunks.chunks)

        def batches():
            for start in range(0, len(members), size):
                b = trainer.strategy.batch_to_device(collate([ds[i] for i in members[start : start + size]]))
                yield trainer.datamodule.on_after_batch_transfer(b, 0)["inp"]

        return group_statistics(pl_module, self._run_fn(pl_module), batches)

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
