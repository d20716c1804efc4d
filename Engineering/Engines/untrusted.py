"""Configuration read from a downloaded folder or a checkpoint never names code.

A Hub folder's ``config.json`` and a checkpoint's saved ``imlatent_config`` are files
anyone can write. The keys that name code to import and call (``custom_loss_class``,
and any ``*_class`` / ``*_target_`` key a drive may add) accept only built-in names
from such sources; code names are accepted only from the user's own command line or
YAML. Every other string in our configs selects from a fixed registry (drives, pythae
models, torch.optim optimisers, norm types), so this is the one gate.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from Engineering.errors import UserError

CODE_KEY_SUFFIXES = ("_class", "_target_")


def builtin_names() -> dict[str, tuple[str, ...]]:
    """Per code key, the built-in names the registered tasks declare (``TaskSpec.code_names``)."""
    from Engineering.Engines import registry

    names: dict[str, tuple[str, ...]] = {}
    for spec in registry.tasks().values():
        for key, allowed in spec.code_names.items():
            names[key] = names.get(key, ()) + tuple(n for n in allowed if n not in names.get(key, ()))
    return names


def _walk(node: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _walk(value, path + (str(key),))
    elif isinstance(node, (list, tuple)):
        for i, value in enumerate(node):
            yield from _walk(value, path + (str(i),))
    else:
        yield path, node


def refuse_code(tree: dict, where: str) -> None:
    """One UserError if ``tree`` (configuration from ``where``) names anything but a built-in at a code key."""
    names = None
    for path, value in _walk(tree):
        key = next((p for p in reversed(path) if not p.isdigit()), "")
        if not key.endswith(CODE_KEY_SUFFIXES) or value is None:
            continue
        names = names or builtin_names()
        allowed = names.get(key, ())
        if isinstance(value, str) and value in allowed:
            continue
        raise UserError(
            f"{where} names code at {'§'.join(path)} = {value!r}: configuration from a downloaded "
            f"folder or a checkpoint may only use built-in names ({', '.join(allowed) or 'none'}); "
            "code names are accepted only from your own command line or YAML"
        )
