"""The third-party console messages the project silences, in one place (MainEngine calls :func:`quiet` before it
builds a Trainer). Each is named exactly (message text, category, origin), so that every other warning, and every
message of the project itself, still shows:

- Lightning's advertisement at every Trainer start, "💡 Tip: For seamless cloud logging ... litlogger ..." (a log
  record of Lightning's rank-zero logger, dropped by a filter on that logger);
- "`isinstance(treespec, LeafSpec)` is deprecated": torch's deprecation, raised inside Lightning's own
  ``utilities/_pytree.py`` on every fit (nothing the user or the project calls);
- "Found N module(s) in eval mode at the start of training": the engines keep their EMA copy (``ema_net``) in
  evaluation mode by design;
- "The 'train_dataloader' does not have many workers ...": ``--num_workers 0`` is the project's documented default
  (the flag reference says how to raise it);
- "The number of training batches (N) is smaller than the logging interval Trainer(log_every_n_steps=5)": short
  demo and test epochs; the epoch metrics are logged either way.
"""

from __future__ import annotations

import logging
import warnings

# (message regex, category) of the silenced warnings (warnings.filterwarnings matches the message's start)
WARNINGS = (
    (r"`isinstance\(treespec, LeafSpec\)` is deprecated", Warning),
    (r"Found \d+ module\(s\) in eval mode at the start of training", Warning),
    (r"The '\w+' does not have many workers which may be a bottleneck", Warning),
    (r"The number of training batches \(\d+\) is smaller than the logging interval", Warning),
)
# the loggers Lightning's rank_zero_info writes to (lightning_utilities' module logger, as set by each package)
TIP_LOGGERS = (
    "lightning.pytorch.utilities.rank_zero",
    "lightning.fabric.utilities.rank_zero",
    "lightning_utilities.core.rank_zero",
)


class _NoTips(logging.Filter):
    """Drops Lightning's "💡 Tip: ..." advertisements (litlogger, litmodels)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡 Tip")


_NO_TIPS = _NoTips()


def quiet() -> None:
    """Install the filters above (idempotent: a filter already installed is not added twice)."""
    for message, category in WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
    for name in TIP_LOGGERS:
        logger = logging.getLogger(name)
        if _NO_TIPS not in logger.filters:
            logger.addFilter(_NO_TIPS)
