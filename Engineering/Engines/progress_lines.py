"""Progress for logs that are not a terminal (a SLURM output file, ``nohup``, a CI log).

A redrawn bar is useless there: Rich prints nothing until a stage ends, tqdm fills the file with carriage
returns. :class:`ProgressLines` is a Lightning progress bar that writes one plain line per stage at its first
batch, then at most every ``every_s`` seconds, and at its last batch, so a week-long test phase of a cohort
shows how far it is and how long it has left; at the end of a training epoch it prints the epoch's metrics.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

from lightning.pytorch.callbacks import ProgressBar


class ProgressLines(ProgressBar):
    def __init__(self, every_s: float = 60.0, stream: TextIO | None = None):
        super().__init__()
        self.every_s = every_s
        self._stream = stream
        self._enabled = True
        self._start: dict[str, float] = {}
        self._last: dict[str, float] = {}

    # the ProgressBar interface
    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    @property
    def is_enabled(self) -> bool:
        return self._enabled and self.trainer.is_global_zero

    def _line(self, text: str) -> None:
        print(text, file=self._stream or sys.stderr, flush=True)

    def _tick(self, stage: str, done: int, total: int | float) -> None:
        if not self.is_enabled:
            return
        now = time.monotonic()
        start = self._start.setdefault(stage, now)
        finite = isinstance(total, int) or (isinstance(total, float) and total != float("inf"))
        last = done == int(total) if finite else False
        if done > 1 and not last and now - self._last.get(stage, 0.0) < self.every_s:
            return
        self._last[stage] = now
        rate = (done - 1) / (now - start) if done > 1 and now > start else 0.0
        text = f"{stage}: {done}/{int(total) if finite else '?'} batches"
        if finite and total:
            text += f" ({100 * done / total:.0f}%)"
        if rate > 0:
            text += f", {rate:.2f} batches/s"
            if finite and not last:
                left = (total - done) / rate
                text += f", about {left / 60:.1f} min left" if left >= 60 else f", about {left:.0f} s left"
        self._line(text)

    def _reset(self, stage: str) -> None:
        self._start.pop(stage, None)
        self._last.pop(stage, None)

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._reset(f"train epoch {trainer.current_epoch}")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._tick(f"train epoch {trainer.current_epoch}", batch_idx + 1, self.total_train_batches)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if not self.is_enabled:
            return
        metrics = {k: v for k, v in self.get_metrics(trainer, pl_module).items() if k != "v_num"}
        shown = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items())
        self._line(f"epoch {trainer.current_epoch} done" + (f": {shown}" if shown else ""))

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._tick("test", batch_idx + 1, _total(trainer.num_test_batches, dataloader_idx))

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._tick("predict", batch_idx + 1, _total(trainer.num_predict_batches, dataloader_idx))

    def on_test_start(self, trainer, pl_module) -> None:
        self._reset("test")

    def on_predict_start(self, trainer, pl_module) -> None:
        self._reset("predict")


def _total(batches: list | int | float, dataloader_idx: int) -> int | float:
    return batches[dataloader_idx] if isinstance(batches, list) else batches
