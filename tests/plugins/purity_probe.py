"""A test plug-in: the ssl task, plus a check of every training batch's groups (what --batch_groups promises).

Each rank appends one line per training batch to $PURITY_LOG: rank, number of distinct groups in the batch,
and the batch's group. Registered as the task ``purity``.
"""

from __future__ import annotations

import dataclasses
import os

from Engineering.Engines import registry
from Engineering.Engines.WarpDrives.SSL.engine import SSLEngine


class PurityEngine(SSLEngine):
    def training_step(self, batch, batch_idx):
        dm = self.trainer.datamodule
        codes = dm.group_codes("train")[batch["index"].cpu().numpy()]
        with open(os.environ["PURITY_LOG"], "a") as fh:
            fh.write(f"{self.global_rank} {len(set(codes.tolist()))} {int(codes[0])}\n")
        return super().training_step(batch, batch_idx)


_ssl = registry.get("ssl")
# the SSL task under its own drive: ssl's defaults less the drive and tag register() derived from ssl's drive
registry.register(
    dataclasses.replace(
        _ssl,
        name="purity",
        engine=PurityEngine,
        module=__name__,
        drive="SSL_purity",
        defaults={k: v for k, v in _ssl.defaults.items() if k not in ("model§drive", "model§tag")},
    )
)
