"""The README's flag tables with every executor's own defaults (the tasks live at this level).

python -m Engineering.Engines.docs            # print the tables
python -m Engineering.Engines.docs --write    # refresh README.md
"""
from __future__ import annotations

import sys
from pathlib import Path

from Engineering.config.docs import flag_tables, refreshed_readme
from Engineering.Engines.tasks import diffae_task, latentcls_task, recon_task

REPO = Path(__file__).resolve().parents[2]


def executor_tasks():
    configs = Path("Configs")  # relative to the repository: the README is the same on every machine
    return [diffae_task(configs), recon_task(configs), latentcls_task(configs)]


def tables() -> str:
    return flag_tables(executor_tasks())


if __name__ == "__main__":
    if "--write" in sys.argv:
        readme = REPO / "README.md"
        readme.write_text(refreshed_readme(readme.read_text(), executor_tasks()))
    else:
        print(tables())
