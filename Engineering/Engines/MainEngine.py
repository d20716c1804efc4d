"""Builds the run from the config: Lightning Trainer, callbacks, loggers, checkpoints, run modes."""
from __future__ import annotations

from typing import Sequence

from Engineering.config.loader import Task, dump_yaml, resolve


def run(argv: Sequence[str], task: Task) -> None:
    resolved = resolve(argv, task)
    if resolved.control["print_config"]:
        print(dump_yaml(resolved.raw), end="")
        return
    raise NotImplementedError
