"""Markdown tables of every flag, kept in README.md between FLAGS markers.

python -m Engineering.config.docs            # print the tables
python -m Engineering.config.docs --write    # refresh README.md
"""
from __future__ import annotations

import sys
from pathlib import Path

from Engineering.config.flags import CONTROL, DIFFAE_FLAGS, FLAGS, LATENTCLS_FLAGS, RECON_FLAGS

BEGIN, END = "<!-- FLAGS:BEGIN -->", "<!-- FLAGS:END -->"


def flag_tables() -> str:
    out, groups = [], {}
    for f in CONTROL + FLAGS + DIFFAE_FLAGS + RECON_FLAGS + LATENTCLS_FLAGS:
        groups.setdefault(f.group, []).append(f)
    for group, flags in groups.items():
        out += [f"#### {group}", "", "| flag | config path | type | default | meaning |", "|---|---|---|---|---|"]
        for f in flags:
            path = "§".join(f.path) if f.path else "(control)"
            choices = f" One of {', '.join(map(str, f.choices))}." if f.choices else ""
            ops = {"gt": ">", "ge": ">=", "lt": "<", "le": "<="}
            if f.bounds:
                choices += " Must be " + " and ".join(f"{ops[k]} {v:g}" for k, v in f.bounds) + "."
            only = (" (main_diffAE)" if f in DIFFAE_FLAGS else " (main_recon)" if f in RECON_FLAGS
                    else " (main_latentcls)" if f in LATENTCLS_FLAGS else "")
            out.append(f"| `--{f.name}` | `{path}` | {f.type} | `{f.default!r}` | {f.help}{choices}{only} |")
        out.append("")
    return "\n".join(out)


def refreshed_readme(text: str) -> str:
    head, _, rest = text.partition(BEGIN)
    _, _, tail = rest.partition(END)
    return f"{head}{BEGIN}\n{flag_tables()}\n{END}{tail}"


if __name__ == "__main__":
    if "--write" in sys.argv:
        readme = Path(__file__).resolve().parents[2] / "README.md"
        readme.write_text(refreshed_readme(readme.read_text()))
    else:
        print(flag_tables())
