"""The reference pages' flag and YAML-key tables with every registered task's own defaults (read from the
task registry).

python -m Engineering.Engines.docs            # print the tables
python -m Engineering.Engines.docs --write    # refresh docs/reference/flags.md and docs/reference/yaml-keys.md
"""

from __future__ import annotations

import dataclasses
import sys

from Engineering.config.docs import FLAGS_PAGE, KEYS_PAGE, flag_tables, refreshed_flags_page, refreshed_keys_page
from Engineering.Engines import registry


def executor_tasks():
    """The built-in tasks with their default files relative to the repository (the generated pages are the same on
    every machine)."""

    def rel(path: str) -> str:
        return str(registry.Path(path).relative_to(registry.REPO)) if path else path

    return [
        dataclasses.replace(t, configyml=rel(t.configyml), datajson=rel(t.datajson)) for t in registry.builtin_tasks()
    ]


def tables() -> str:
    return flag_tables(executor_tasks())


if __name__ == "__main__":
    if "--write" in sys.argv:
        for page, refresh in ((FLAGS_PAGE, refreshed_flags_page), (KEYS_PAGE, refreshed_keys_page)):
            path = registry.REPO / page
            path.write_text(refresh(path.read_text(), executor_tasks()))
    else:
        print(tables())
