"""WarpDrives: model plug-ins, each a (config dataclass, nn.Module) pair in its own folder.

A timm-style registry: ``DRIVES`` maps a name to that pair, ``create_drive`` builds one.
Adding a model = a new folder + one entry here.
"""
from __future__ import annotations

import dataclasses

from torch import nn

from Engineering.errors import UserError

from .DiffAE import DiffAE, DiffAEConfig

DRIVES: dict[str, tuple[type, type[nn.Module]]] = {
    "DiffAE": (DiffAEConfig, DiffAE),
}


class UnknownDriveError(ValueError, UserError):
    """A WarpDrive name that is not registered."""


def create_drive(name: str, **cfg) -> nn.Module:
    """Build the WarpDrive ``name`` from its config fields (``DRIVES[name][0](**cfg)``)."""
    try:
        config_cls, model_cls = DRIVES[name]
    except KeyError:
        raise UnknownDriveError(f"unknown WarpDrive {name!r}; valid names: {', '.join(sorted(DRIVES))}") from None
    if dataclasses.is_dataclass(config_cls):
        valid = {f.name for f in dataclasses.fields(config_cls)}
        unknown = sorted(set(cfg) - valid)
        if unknown:
            raise UnknownDriveError(f"unknown {name} config field(s) {', '.join(unknown)}; "
                                    f"valid fields: {', '.join(sorted(valid))}")
    return model_cls(config_cls(**cfg))
