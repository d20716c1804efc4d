"""Path overrides: ``--a§b§c VALUE`` sets ``cfg['a']['b']['c']``.

Grammar (kept from the ancestor, with its holes closed):

* ``--a§b§c VALUE``, ``--a§b§c=VALUE``; ``$`` works as the separator too.
* ``--json§key VALUE`` targets the dataNpath JSON (section ``json``).
* The value takes the type of the value it replaces; a new key is parsed as a
  YAML scalar or flow collection (``"[1,2]"``, ``"{loss_fn: l1}"``).
* A missing path is created with a warning naming the closest existing key;
  ``strict=True`` turns that into an error. A path through a scalar, or a value
  that cannot take the existing type, is an error naming the path.
"""

from __future__ import annotations

import difflib
import re
import warnings
from dataclasses import dataclass
from typing import Any

import yaml

from Engineering.errors import UserError

_SEP = re.compile(r"[§$]")
_TRUE = {"true", "yes", "y", "on", "1"}
_FALSE = {"false", "no", "n", "off", "0"}
BOOL_WORDS = _TRUE | _FALSE


class OverrideWarning(UserWarning):
    """A path override created a new key (possibly a typo)."""


@dataclass(frozen=True)
class Override:
    path: tuple[str, ...]
    raw: str

    @property
    def dotted(self) -> str:
        return "§".join(self.path)


def is_path_flag(name: str) -> bool:
    return bool(_SEP.search(name))


def split_path(name: str) -> tuple[str, ...]:
    parts = tuple(_SEP.split(name))
    if any(p == "" for p in parts):
        raise UserError(f"override --{name}: empty path segment")
    return parts


def parse_bool(raw: str | bool) -> bool:
    if isinstance(raw, bool):
        return raw
    low = str(raw).strip().lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    raise ValueError(f"{raw!r} is not a boolean (true/false/yes/no/1/0)")


def parse_new_value(raw: str) -> Any:
    """A value for a key that has no existing type: a YAML scalar or flow collection."""
    try:
        val = yaml.safe_load(raw) if raw.strip() else raw
    except yaml.YAMLError:
        return raw
    if isinstance(val, str):
        try:  # YAML 1.1 reads '1e-3' as a string
            return float(val) if val.strip().lower() not in {"nan", "inf", "-inf", "infinity"} else val
        except ValueError:
            pass
    return val


def coerce_like(existing: Any, raw: Any, where: str) -> Any:
    """Convert ``raw`` (usually a CLI string) to the type of ``existing``."""
    if not isinstance(raw, str):
        return raw
    try:
        if isinstance(existing, bool):
            return parse_bool(raw)
        if isinstance(existing, int):
            val = yaml.safe_load(raw)
            if isinstance(val, bool) or not isinstance(val, int):
                if isinstance(val, float) and val.is_integer():
                    return int(val)
                raise ValueError(f"{raw!r} is not an integer")
            return val
        if isinstance(existing, float):
            return float(raw)
        if isinstance(existing, str):
            return raw
        if isinstance(existing, (list, tuple)):
            val = yaml.safe_load(raw)
            if isinstance(val, str) and "," in val:
                val = [parse_new_value(v.strip()) for v in val.split(",")]
            if not isinstance(val, list):
                val = [val]
            return val
        if isinstance(existing, dict):
            val = yaml.safe_load(raw)
            if not isinstance(val, dict):
                raise ValueError(f"{raw!r} is not a mapping such as '{{key: value}}'")
            return val
    except (ValueError, yaml.YAMLError) as exc:
        raise UserError(f"{where}: cannot take {raw!r} as {type(existing).__name__} ({exc})") from None
    return parse_new_value(raw)


def closest_key(name: str, candidates, cutoff: float = 0.6) -> str | None:
    found = difflib.get_close_matches(name, [str(c) for c in candidates], n=1, cutoff=cutoff)
    return found[0] if found else None


def apply_override(cfg: dict, ov: Override, strict: bool = False) -> None:
    """Set ``ov.path`` in the nested dict ``cfg`` following the grammar above."""
    node = cfg
    for depth, part in enumerate(ov.path[:-1]):
        where = "§".join(ov.path[: depth + 1])
        if part not in node:
            _report_new(node, part, ov, strict)
            node[part] = {}
        elif not isinstance(node[part], dict):
            raise UserError(f"override --{ov.dotted}: '{where}' is a value, not a section")
        node = node[part]
    last = ov.path[-1]
    if last in node and node[last] is not None:
        node[last] = coerce_like(node[last], ov.raw, f"override --{ov.dotted}")
    else:
        if last not in node:
            _report_new(node, last, ov, strict)
        node[last] = parse_new_value(ov.raw)


def _report_new(node: dict, part: str, ov: Override, strict: bool) -> None:
    if not node:  # an empty mapping (e.g. DS_sanity_filters) takes any key: nothing to mistype
        return
    hint = closest_key(part, node.keys())
    msg = f"override --{ov.dotted}: '{part}' does not exist and is created"
    if hint:
        msg += f" (did you mean '{hint}'?)"
    if strict:
        raise UserError(msg.replace("and is created", "(--strict_overrides)"))
    warnings.warn(msg, OverrideWarning, stacklevel=3)
