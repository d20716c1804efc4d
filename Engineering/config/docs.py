"""Markdown tables of every flag, kept in README.md between FLAGS markers.

python -m Engineering.Engines.docs            # print the tables (with each executor's own defaults)
python -m Engineering.Engines.docs --write    # refresh README.md
"""
from __future__ import annotations

from typing import Sequence

from Engineering.config.flags import CONTROL, DIFFAE_FLAGS, FLAGS, LATENTCLS_FLAGS, RECON_FLAGS
from Engineering.config.loader import Task, task_default

BEGIN, END = "<!-- FLAGS:BEGIN -->", "<!-- FLAGS:END -->"
_OPS = {"gt": ">", "ge": ">=", "lt": "<", "le": "<="}


def _defaults(flag, tasks: Sequence[Task]) -> str:
    """The generic default, then each executor whose own default differs (what `main_<task>.py` really uses)."""
    text = f"`{flag.default!r}`"
    own = [f"main_{t.name} `{task_default(t, flag)!r}`" for t in tasks
           if flag in FLAGS + CONTROL + t.extra_flags and task_default(t, flag) != flag.default]
    return text + (f" ({'; '.join(own)})" if own else "")


def flag_tables(tasks: Sequence[Task] = ()) -> str:
    out, groups = [], {}
    for f in CONTROL + FLAGS + DIFFAE_FLAGS + RECON_FLAGS + LATENTCLS_FLAGS:
        groups.setdefault(f.group, []).append(f)
    for group, flags in groups.items():
        out += [f"#### {group}", "", "| flag | config path | type | default | meaning |", "|---|---|---|---|---|"]
        for f in flags:
            path = "§".join(f.path) if f.path else "(control)"
            choices = f" One of {', '.join(map(str, f.choices))}." if f.choices else ""
            if f.bounds:
                choices += " Must be " + " and ".join(f"{_OPS[k]} {v:g}" for k, v in f.bounds) + "."
            only = (" (main_diffAE)" if f in DIFFAE_FLAGS else " (main_recon)" if f in RECON_FLAGS
                    else " (main_latentcls)" if f in LATENTCLS_FLAGS else "")
            out.append(f"| `--{f.name}` | `{path}` | {f.type} | {_defaults(f, tasks)} | {f.help}{choices}{only} |")
        out.append("")
    return "\n".join(out)


def refreshed_readme(text: str, tasks: Sequence[Task] = ()) -> str:
    head, _, rest = text.partition(BEGIN)
    _, _, tail = rest.partition(END)
    return f"{head}{BEGIN}\n{flag_tables(tasks)}\n{END}{tail}"
