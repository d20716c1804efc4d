"""The README's flag tables with every registered task's own defaults (read from the task registry).

python -m Engineering.Engines.docs            # print the tables
python -m Engineering.Engines.docs --write    # refresh README.md
"""
from __future__ import annotations

import dataclasses
import sys

from Engineering.config.docs import flag_tables, refreshed_readme
from Engineering.Engines import registry


def executor_tasks():
    """The built-in tasks with their default files relative to the repository (the README is the same on every
    machine)."""
    def rel(path: str) -> str:
        return str(registry.Path(path).relative_to(registry.REPO)) if path else path
    return [dataclasses.replace(t, configyml=rel(t.configyml), datajson=rel(t.datajson))
            for t in registry.builtin_tasks()]


def tables() -> str:
    return flag_tables(executor_tasks())


if __name__ == "__main__":
    if "--write" in sys.argv:
        readme = registry.REPO / "README.md"
        readme.write_text(refreshed_readme(readme.read_text(), executor_tasks()))
    else:
        print(tables())
