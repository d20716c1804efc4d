"""Markdown tables of every flag and every typed YAML key, kept in the documentation's reference pages
(docs/reference/flags.md between the FLAGS markers, docs/reference/yaml-keys.md between the KEYS markers).

python -m Engineering.Engines.docs            # print the tables (with each executor's own defaults)
python -m Engineering.Engines.docs --write    # refresh the two reference pages
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from pydantic import BaseModel

from Engineering.config.flags import CONTROL, FLAGS, Flag
from Engineering.config.loader import Task, task_default
from Engineering.config.schema import COMMON_KEYS

BEGIN, END = "<!-- FLAGS:BEGIN -->", "<!-- FLAGS:END -->"
KEYS_BEGIN, KEYS_END = "<!-- KEYS:BEGIN -->", "<!-- KEYS:END -->"
# the pages that hold the tables, relative to the repository
FLAGS_PAGE, KEYS_PAGE = "docs/reference/flags.md", "docs/reference/yaml-keys.md"
_OPS = {"gt": ">", "ge": ">=", "lt": "<", "le": "<="}


def _defaults(flag, tasks: Sequence[Task]) -> str:
    """The generic default, then each executor whose own default differs (what `main_<task>.py` really uses)."""
    text = f"`{flag.default!r}`"
    own = [
        f"main_{t.name} `{task_default(t, flag)!r}`"
        for t in tasks
        if flag in FLAGS + CONTROL + t.extra_flags and task_default(t, flag) != flag.default
    ]
    return text + (f" ({'; '.join(own)})" if own else "")


def flag_tables(tasks: Sequence[Task] = ()) -> str:
    """Common flags, then each task's own flags (marked with the executors that have them)."""
    out: list[str] = []
    groups: dict[str, list[Flag]] = {}  # flag group -> its flags, in table order
    owners: dict[str, list[str]] = {}  # flag name -> the executors that own it (none: a common flag)
    for f in CONTROL + FLAGS + tuple(f for t in tasks for f in t.extra_flags):
        if f.name not in owners:
            groups.setdefault(f.group, []).append(f)
        owners.setdefault(f.name, [])
    for t in tasks:
        for f in t.extra_flags:
            owners[f.name].append(f"main_{t.name}")
    for group, flags in groups.items():
        out += [f"## {group}", "", "| flag | config path | type | default | meaning |", "|---|---|---|---|---|"]
        for f in flags:
            path = "§".join(f.path) if f.path else "(control)"
            choices = f" One of {', '.join(map(str, f.choices))}." if f.choices else ""
            if f.bounds:
                choices += " Must be " + " and ".join(f"{_OPS[k]} {v:g}" for k, v in f.bounds) + "."
            only = f" ({', '.join(owners[f.name])})" if owners[f.name] else ""
            out.append(f"| `--{f.name}` | `{path}` | {f.type} | {_defaults(f, tasks)} | {f.help}{choices}{only} |")
        out.append("")
    return "\n".join(out)


def _type_name(annotation) -> str:
    text = getattr(annotation, "__name__", None) if not getattr(annotation, "__args__", None) else None
    text = text or str(annotation).replace("typing.", "").replace("NoneType", "None")
    return re.sub(r"Annotated\[(\w+), Strict\(strict=True\)\]", r"\1", text)


def _key_rows(model: type[BaseModel], prefix: str, flagged: set) -> list[str]:
    rows = []
    for name, info in model.model_fields.items():
        path = f"{prefix}§{name}"
        if path in flagged:  # a flag's key: documented (with its default) in the flag tables
            continue
        sub = info.annotation
        if isinstance(sub, type) and issubclass(sub, BaseModel):
            rows += _key_rows(sub, path, flagged)
            continue
        bounds = [
            f"{op} {getattr(m, attr)}"
            for m in info.metadata
            for attr, op in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<="))
            if hasattr(m, attr)
        ]
        extra = f" Must be {' and '.join(bounds)}." if bounds else ""
        rows.append(f"| `{path}` | `{_type_name(sub)}` | `{info.default!r}` | {info.description or ''}{extra} |")
    return rows


def key_tables(tasks: Sequence[Task] = ()) -> str:
    """Every typed YAML key: the keys every task has, then each task's own (their defaults are the models')."""
    flagged = {"§".join(f.path) for f in FLAGS + CONTROL + tuple(f for t in tasks for f in t.extra_flags)}
    out = ["## Every task", "", "| key | type | default | meaning |", "|---|---|---|---|"]
    for section, model in COMMON_KEYS.items():
        out += _key_rows(model, section, flagged)
    for t in tasks:
        if not t.sections:
            continue
        out += ["", f"## main_{t.name}", "", "| key | type | default | meaning |", "|---|---|---|---|"]
        for section, model in t.sections.items():
            out += _key_rows(model, section, flagged)
    return "\n".join(out) + "\n"


def _replace_block(text: str, begin: str, end: str, body: str) -> str:
    head, found, rest = text.partition(begin)
    if not found:
        raise ValueError(f"the page has no {begin} marker")
    _, _, tail = rest.partition(end)
    return f"{head}{begin}\n{body}\n{end}{tail}"


def refreshed_flags_page(text: str, tasks: Sequence[Task] = ()) -> str:
    """The flags page with its generated block replaced."""
    return _replace_block(text, BEGIN, END, flag_tables(tasks))


def refreshed_keys_page(text: str, tasks: Sequence[Task] = ()) -> str:
    """The YAML-keys page with its generated block replaced."""
    return _replace_block(text, KEYS_BEGIN, KEYS_END, key_tables(tasks))
