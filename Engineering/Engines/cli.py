"""The command line of every task: ``Executors/main.py --task NAME [--plugins mod,...] [flags]``.

``--plugins`` (and ``$IMLATENT_PLUGINS``) are imported before the config is resolved, so a plug-in's task, flags
and YAML defaults are known to the parser. ``main_<task>.py`` are aliases that fix ``--task``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from Engineering.Engines import registry
from Engineering.Engines.MainEngine import run
from Engineering.errors import UserError


def _take(argv: list[str], name: str) -> str | None:
    """Remove ``--name VALUE`` / ``--name=VALUE`` from argv and return the value (the last one wins)."""
    value, flag = None, f"--{name}"
    i = 0
    while i < len(argv):
        tok = argv[i]
        if tok == flag:
            if i + 1 >= len(argv):
                raise UserError(f"flag {flag} needs a value")
            value = argv[i + 1]
            del argv[i : i + 2]
        elif tok.startswith(flag + "="):
            value = tok.split("=", 1)[1]
            del argv[i]
        else:
            i += 1
    return value


def main(argv: Sequence[str], task: str | None = None) -> dict:
    argv = list(argv)
    plugins = _take(argv, "plugins")
    name = _take(argv, "task")
    registry.load_plugins([plugins] if plugins else [])
    if task and name and name != task:
        raise UserError(f"--task {name}: this executor runs task {task!r} (use Executors/main.py --task {name})")
    name = name or task
    if name is None:
        listing = ", ".join(f"{t.name} ({t.description})" for t in registry.tasks().values())
        if any(a in ("-h", "--help") for a in argv):
            prog = sys.argv[0] if sys.argv and sys.argv[0].startswith("imlatent") else "main.py"  # as typed
            print(
                f"usage: {prog} --task NAME [--plugins MOD[,MOD]] [flags]; --task NAME --help lists its flags.\n"
                f"registered tasks: {listing}"
            )
            return {}
        raise UserError(f"--task NAME is required; registered tasks: {', '.join(sorted(registry.tasks()))}")
    return run(argv, registry.get(name))
