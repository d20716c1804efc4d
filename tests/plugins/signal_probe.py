"""A test plug-in: the diffAE task that sends its own process a signal ($PROBE_SIGNAL, default TERM) at training
step $SIGNAL_AT_STEP or test batch $SIGNAL_AT_TEST, as ``timeout``, ``scancel`` or a SLURM time limit would.
Registered as ``diffae_signal``."""

from __future__ import annotations

import dataclasses
import os
import signal

from Engineering.Engines import registry
from Engineering.Engines.WarpDrives.DiffAE.engine import DiffAEEngine


def _send(env: str, at: int) -> None:
    wanted = os.environ.get(env, "")
    if wanted and int(wanted) == at:
        os.kill(os.getpid(), getattr(signal, "SIG" + os.environ.get("PROBE_SIGNAL", "TERM")))


class SignalProbe(DiffAEEngine):
    def training_step(self, batch, batch_idx):
        _send("SIGNAL_AT_STEP", self.global_step)
        return super().training_step(batch, batch_idx)

    def test_step(self, batch, batch_idx):
        _send("SIGNAL_AT_TEST", batch_idx)
        return super().test_step(batch, batch_idx)


registry.register(
    dataclasses.replace(registry.get("diffAE"), name="diffae_signal", engine=SignalProbe, module=__name__)
)
