"""The per-field spec that maps series descriptions to dataset keys, and key naming.

A spec is YAML or JSON keyed by field ID (``"*"`` applies to any other field); the
entry names follow the attributes users of the ancestor pipeline know::

    "20208":
      primary_data: [CINE_segmented_LAX_2Ch, CINE_segmented_LAX_4Ch]
      multi_primary: true              # keys primary_<tag> instead of one "primary"
      primary_data_tags: [LAX_2Ch, LAX_4Ch]
      auxiliary_data: [{magnitude: "flow*", phase: "flow*_P"}]   # complex from a pair
      auxiliary_data_tags: [flow]
      default_plane: sagittal          # no _<plane> suffix for this plane
      repeat_acq: false                # true: _0, _1, ... for repeats of one key

A description is matched exactly, else as a shell-style pattern (``*``, ``?``).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path

import yaml

from Engineering.data.layout import PLANES, parse_key
from Engineering.errors import UserError

ENTRY_KEYS = {
    "primary_data",
    "multi_primary",
    "primary_data_tags",
    "auxiliary_data",
    "auxiliary_data_tags",
    "default_plane",
    "repeat_acq",
}


@dataclass(frozen=True)
class Rule:
    """Series matching ``magnitude`` (and, for complex data, ``phase``) become key ``base``."""

    base: str
    magnitude: str
    phase: str | None = None

    def matches(self, description: str) -> bool:
        return matches_description(self.magnitude, description)

    def matches_phase(self, description: str) -> bool:
        return self.phase is not None and matches_description(self.phase, description)


def matches_description(pattern: str, description: str) -> bool:
    """Exact match, else shell-style pattern match."""
    return description == pattern or fnmatchcase(description, pattern)


@dataclass
class FieldSpec:
    """How one field's series become keys."""

    rules: list[Rule] = field(default_factory=list)
    default_plane: str | None = None  # None: not set here (the command line decides)
    repeat_acq: bool | None = None
    store_all: bool = False  # no spec: every series is "primary", numbered when several

    def rule_for(self, description: str) -> Rule | None:
        if self.store_all:
            return Rule("primary", description)
        return next((r for r in self.rules if r.matches(description)), None)

    def is_phase(self, description: str) -> bool:
        return any(r.matches_phase(description) for r in self.rules)


def _tag_ok(kind: str, tag: str) -> bool:
    parsed = parse_key(f"{kind}_{tag}")
    return parsed is not None and parsed.tag == tag and parsed.plane is None and parsed.repeat is None


def _rules(entry: dict, kind: str, where: str) -> list[Rule]:
    data = entry.get(f"{kind}_data") or []
    if isinstance(data, (str, dict)):
        data = [data]
    multi = kind == "auxiliary" or bool(entry.get("multi_primary", False))
    tags = entry.get(f"{kind}_data_tags") or []
    if multi and len(tags) != len(data):
        raise UserError(f"{where}: {kind}_data has {len(data)} entries but {kind}_data_tags has {len(tags)}")
    rules = []
    for i, item in enumerate(data):
        if isinstance(item, dict):
            if set(item) != {"magnitude", "phase"}:
                raise UserError(
                    f"{where}: a {kind}_data pair needs exactly the keys magnitude and phase, got {sorted(item)}"
                )
            mag, phase = str(item["magnitude"]), str(item["phase"])
        else:
            mag, phase = str(item), None
        if multi:
            tag = str(tags[i])
            if not _tag_ok(kind, tag):
                raise UserError(f"{where}: tag {tag!r} would make an invalid key (no plane name or number at its end)")
            base = f"{kind}_{tag}"
        else:
            base = kind
        rules.append(Rule(base, mag, phase))
    return rules


def load_spec(path: str | Path) -> dict[str, FieldSpec]:
    """Read and check a YAML/JSON spec; errors name the file and the entry."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"spec file not found: {path}")
    try:
        text = path.read_text()
        raw = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError, UnicodeDecodeError) as exc:
        raise UserError(f"spec file {path} cannot be parsed: {str(exc).splitlines()[0]}") from exc
    if not isinstance(raw, dict) or not raw:
        raise UserError(f"spec file {path}: expected a mapping of field IDs to entries")
    spec = {}
    for fid, entry in raw.items():
        where = f"spec {path} field {fid}"
        if not isinstance(entry, dict):
            raise UserError(f"{where}: expected a mapping")
        unknown = set(entry) - ENTRY_KEYS
        if unknown:
            raise UserError(f"{where}: unknown entries {sorted(unknown)} (allowed: {sorted(ENTRY_KEYS)})")
        plane = entry.get("default_plane")
        if plane is not None and plane not in PLANES:
            raise UserError(f"{where}: default_plane must be one of {PLANES}, got {plane!r}")
        rules = _rules(entry, "primary", where) + _rules(entry, "auxiliary", where)
        if not rules:
            raise UserError(f"{where}: names no primary_data or auxiliary_data")
        repeat = entry.get("repeat_acq")
        spec[str(fid)] = FieldSpec(rules, plane, None if repeat is None else bool(repeat))
    return spec


def assign_keys(
    items: list[tuple[str, str | None]],
    default_plane: str | None,
    repeat_acq: bool,
    number_when_several: bool = False,
    taken: set[str] | frozenset = frozenset(),
) -> list[str | None]:
    """Key for each (base, plane) in acquisition order; None for an ignored repeat.

    ``_<plane>`` is added when the plane is known and differs from ``default_plane``
    (or no default is set); with ``repeat_acq`` every key gets ``_<n>``; with
    ``number_when_several`` only stems that occur more than once are numbered.
    Keys already in ``taken`` (the group's existing datasets) are not reused.
    """
    stems = [base if plane is None or plane == default_plane else f"{base}_{plane}" for base, plane in items]
    totals = Counter(stems)
    used = set(taken)
    next_n: Counter = Counter()
    keys: list[str | None] = []
    for stem in stems:
        if repeat_acq or (number_when_several and totals[stem] > 1):
            while f"{stem}_{next_n[stem]}" in used:
                next_n[stem] += 1
            key = f"{stem}_{next_n[stem]}"
        else:
            key = None if stem in used else stem
        if key is not None:
            used.add(key)
        keys.append(key)
    return keys
