"""A drive config field with its meaning: the one home of a key's default and of its description.

``Engineering.config.schema.keys_from_dataclass`` reads ``metadata["help"]`` as the YAML key's description (the
reference pages show it); a network module stays pure (this imports nothing of the config layer).
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any


def described(default: Any, meaning: str) -> Any:
    """A field with ``default`` (a mutable one copied for each instance) and ``meaning``."""
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(default_factory=lambda: copy.deepcopy(default), metadata={"help": meaning})
    return dataclasses.field(default=default, metadata={"help": meaning})


def required(meaning: str) -> Any:
    """A keyword-only field without a default: a value its task always sets (``latent_dim``: the task's default
    is its one home)."""
    return dataclasses.field(kw_only=True, metadata={"help": meaning})
