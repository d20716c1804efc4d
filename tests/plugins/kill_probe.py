"""A test plug-in: the diffAE task whose test phase kills its own process (SIGKILL: no cleanup runs) after
$KILL_AFTER test batches, to check that a killed inference resumes. Registered as ``diffae_kill``."""

from __future__ import annotations

import dataclasses
import os
import signal

from Engineering.Engines import registry
from Engineering.Engines.WarpDrives.DiffAE.engine import DiffAEEngine


class KillProbe(DiffAEEngine):
    def test_step(self, batch, batch_idx):
        after = int(os.environ.get("KILL_AFTER", "0") or 0)
        if after and batch_idx == after:
            os.kill(os.getpid(), signal.SIGKILL)
        return super().test_step(batch, batch_idx)


registry.register(dataclasses.replace(registry.get("diffAE"), name="diffae_kill", engine=KillProbe, module=__name__))
