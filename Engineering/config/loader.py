"""Build the run configuration from the command line.

Precedence, lowest first: flag defaults (with the task's defaults), YAML
(``--configyml_path``), dataNpath JSON (``--datajson_path``), explicit flags,
path overrides (``--a§b VALUE``, ``--json§key VALUE``). Unlike the ancestor, a
JSON key never overrides a flag given explicitly on the command line.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from Engineering.config import overrides as ov
from Engineering.config.ancestor import ancestor_flag, translate_yaml
from Engineering.config.flags import CONTROL, FLAGS, Flag
from Engineering.config.honour import UNREAD_JSON, refuse_unhonoured
from Engineering.config.schema import DataPaths, build_schema, key_defaults, validate
from Engineering.config.validated import Config
from Engineering.errors import ArgParser, UserError

SECTIONS = ("run", "training", "model", "data", "eval")
_LAST_NOTES: list[str] = []  # the warnings of the last resolve
TYPO_CUTOFF = 0.8  # difflib ratio above which an unknown name is taken as a typo of a known one (an error)


@dataclass
class Task:
    """What an executor contributes: its name, default files and flag defaults."""

    name: str
    description: str
    configyml: str = ""
    datajson: str = ""
    defaults: dict[str, Any] = field(default_factory=dict)  # flag name or 'a§b' path -> value
    extra_flags: tuple[Flag, ...] = ()
    # typed YAML keys of this task: section ('model', 'eval', ...) -> pydantic model whose fields join the section
    sections: dict[str, Any] = field(default_factory=dict)
    # called on the merged dict after the explicit flags, before path overrides (a flag that names a file of
    # values, such as --pythae_config, merges them at its own rank)
    flag_layer: Any = None
    # the common flags and keys it honours (config/honour.py; None: no check, for bare configs), the reason a
    # refused one gives, flags whose value it fixes (name -> (value, why)) and conditions (name, cfg -> why | None)
    honours: frozenset | None = None
    why_not: dict[str, str] = field(default_factory=dict)
    fixed: dict[str, tuple] = field(default_factory=dict)
    conditions: tuple = ()

    def owner_of(self, path: tuple[str, ...]) -> str | None:
        """The other task whose typed keys or flags hold ``path`` (the registry knows them)."""
        return None


def _argtype(flag: Flag):
    if flag.type == "int":
        return int
    if flag.type == "float":
        return float
    if flag.type == "num":
        return lambda s: float(s) if any(c in s for c in ".eE") else int(s)
    if flag.type == "bool":
        return _bool_arg
    if flag.type == "ints":
        return lambda s: [int(v) for v in s.replace("[", "").replace("]", "").replace("x", ",").split(",") if v.strip()]
    if flag.type == "optstr":
        return lambda s: None if s.lower() in {"", "none", "null"} else s
    if flag.type == "optfloat":
        return lambda s: None if s.lower() in {"", "none", "null"} else float(s)
    return str


def _bool_arg(s: str) -> bool:
    try:
        return ov.parse_bool(s)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser(task: Task) -> argparse.ArgumentParser:
    """argparse with every flag, grouped for --help; defaults are suppressed so only explicit flags appear."""
    # the console command's name when one was typed (imlatent diffae ...), else the executor's file name
    typed = sys.argv[0] if sys.argv and sys.argv[0].startswith("imlatent") else ""
    parser = ArgParser(
        prog=typed or f"main_{task.name}.py",
        description=task.description,
        argument_default=argparse.SUPPRESS,
        epilog="Any config path can be set with --section§key§sub VALUE (or $ as separator); "
        "dataNpath keys with --json§key VALUE. See docs/reference/datanpath.md.",
    )
    groups: dict[str, argparse._ArgumentGroup] = {}
    for flag in CONTROL + FLAGS + task.extra_flags:
        grp = groups.setdefault(flag.group, parser.add_argument_group(flag.group))
        default = task_default(task, flag)
        help_ = f"{flag.help} [default: {default!r}]" + (f" (config: {'§'.join(flag.path)})" if flag.path else "")
        help_ = help_.replace("%", "%%")
        if flag.type == "bool":
            grp.add_argument(f"--{flag.name}", nargs="?", const=True, type=_bool_arg, metavar="true|false", help=help_)
            grp.add_argument(f"--no-{flag.name}", dest=flag.name, action="store_false", help=argparse.SUPPRESS)
        else:
            grp.add_argument(
                f"--{flag.name}",
                *(f"--{a}" for a in flag.aliases),
                type=_argtype(flag),
                choices=flag.choices,
                metavar=flag.type.upper(),
                help=help_,
            )
    return parser


def task_default(task: Task, flag: Flag):
    if flag.name == "configyml_path":
        return task.configyml
    if flag.name == "datajson_path":
        return task.datajson
    return task.defaults.get(flag.name, flag.default)


def split_argv(argv: Sequence[str], known: dict[str, str]) -> tuple[list[str], list[ov.Override]]:
    """Separate known flags (for argparse) from path overrides.

    ``known`` maps a flag name to 'value', 'bool' (optional true/false) or
    'none'. Done by hand so that an unknown ``--name`` is never captured by a
    known flag's prefix, and values such as ``-5``, ``-1e-3`` or ``a=b`` stay
    values (each known flag is handed to argparse as ``--name=value``).
    """
    flags, overrides = [], []
    i = 0
    while i < len(argv):
        tok = argv[i]
        if not (tok.startswith("--") and len(tok) > 2):
            raise UserError(f"unexpected argument {tok!r} (flags start with --)")
        name, eq, value = tok[2:].partition("=")
        kind = known.get(name)
        has_next = i + 1 < len(argv)
        # a value never starts with '--': that is the next flag (negative numbers start with one '-')
        value_next = has_next and not argv[i + 1].startswith("--")
        if kind is None:
            if not eq:
                if value_next:
                    value, i = argv[i + 1], i + 1
                elif ov.is_path_flag(name):
                    raise UserError(
                        f"override --{name} needs a value" + (f" (got the flag {argv[i + 1]})" if has_next else "")
                    )
                else:  # a bare unknown flag is True (the ancestor's rule)
                    value = "true"
            overrides.append(ov.Override(ov.split_path(name), value))
        elif eq or kind == "none":
            flags.append(tok)
        elif kind == "value":
            if not value_next:
                raise UserError(f"flag --{name} needs a value" + (f" (got the flag {argv[i + 1]})" if has_next else ""))
            flags.append(f"--{name}={argv[i + 1]}")
            i += 1
        else:  # optional boolean value
            nxt = argv[i + 1] if has_next else ""
            if nxt.lower() in ov.BOOL_WORDS:
                flags.append(f"--{name}={nxt}")
                i += 1
            else:
                flags.append(tok)
        i += 1
    return flags, overrides


def read_mapping(path: str | Path, what: str) -> dict:
    """A YAML or JSON file (by suffix; JSON is YAML) holding a mapping; every failure is one line naming it."""
    path = Path(path).expanduser()
    is_json = path.suffix.lower() == ".json"
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh) if is_json else yaml.safe_load(fh)
    except FileNotFoundError:
        raise UserError(f"{what} not found: {path}") from None
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise UserError(
            f"{what} {path} is not valid {'JSON' if is_json else 'YAML'}: {str(exc).splitlines()[0]}"
        ) from None
    if data is None and not is_json:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{what} {path} must hold a mapping (an object), got {type(data).__name__}")
    return data


def read_yaml(path: str | Path) -> dict:
    data = read_mapping(path, "config YAML")
    for section in SECTIONS:
        if section in data and data[section] is not None and not isinstance(data[section], dict):
            raise UserError(
                f"config YAML {path}: section '{section}' must be a mapping of keys, "
                f"got {type(data[section]).__name__} {data[section]!r}"
            )
    return {k: ({} if k in SECTIONS and v is None else v) for k, v in data.items()}


def read_json(path: str | Path) -> dict:
    return read_mapping(path, "dataNpath JSON")


def deep_merge(base: dict, upper: dict) -> dict:
    out = copy.deepcopy(base)
    for key, val in upper.items():
        if isinstance(val, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], val)
        else:
            out[key] = copy.deepcopy(val)
    return out


def _set(cfg: dict, path: tuple[str, ...], value) -> None:
    node = cfg
    for part in path[:-1]:
        node = node.setdefault(part, {})
    node[path[-1]] = value


@dataclass
class Resolved:
    cfg: Config  # the validated pydantic model
    raw: dict  # the same as plain data (what resolved_config.yaml holds)
    control: dict  # print_config, debug, strict_overrides, file paths
    explicit: set  # flag names given on the command line, and override paths ('a§b')


def resolve(argv: Sequence[str], task: Task, layer: dict | None = None) -> Resolved:
    """Merge every source in order of precedence and validate.

    ``layer`` (e.g. what Hub weights fix: architecture, normalisation) ranks above
    the JSON and below explicit flags and overrides.
    """
    parser = build_parser(task)
    known = {}
    for action in parser._actions:
        kind = "bool" if action.nargs == "?" else "value" if action.nargs is None and action.type else "none"
        known.update({opt[2:]: kind for opt in action.option_strings})
    flag_argv, overrides = split_argv(argv, known)
    explicit = vars(parser.parse_args(flag_argv))
    control = {f.name: explicit.pop(f.name, task_default(task, f)) for f in CONTROL}

    all_flags = FLAGS + task.extra_flags
    cfg: dict = key_defaults(task.sections)
    for flag in all_flags:
        _set(cfg, flag.path, copy.deepcopy(task_default(task, flag)))
    for key, val in task.defaults.items():  # path-style task defaults ('model§DiffAE§net_ch')
        if ov.is_path_flag(key):
            _set(cfg, ov.split_path(key), copy.deepcopy(val))

    notes: list[str] = []
    yaml_json: dict = {}
    if control["configyml_path"]:
        sections = {f"{s}§{k}" for s, model in task.sections.items() for k in model.model_fields}
        data, yaml_json, no_effect = translate_yaml(
            read_yaml(control["configyml_path"]), f"config YAML {control['configyml_path']}", sections
        )
        if no_effect:  # the ancestor's keys that change nothing here: one line names them all
            notes.append(
                f"config YAML {control['configyml_path']}: the ancestor's keys {', '.join(no_effect)} have "
                "no effect here"
            )
        cfg = deep_merge(cfg, data)
    data_json = read_json(control["datajson_path"]) if control["datajson_path"] else {}
    flag_by_name = {f.name: f for f in all_flags}
    cfg["json"] = {**DataPaths().model_dump(), **yaml_json}
    for key, val in data_json.items():
        if key in flag_by_name:  # the ancestor allowed flags in the JSON: they rank above YAML, below the CLI
            _set(cfg, flag_by_name[key].path, val)
        else:
            cfg["json"][key] = val

    if layer:
        cfg = deep_merge(cfg, layer)
    for name, val in explicit.items():
        _set(cfg, flag_by_name[name].path, val)
    if task.flag_layer is not None:
        task.flag_layer(cfg)

    schema = build_schema(task.extra_flags, task.sections)
    created: list[tuple[str, ...]] = []  # new keys inside typed sections: recorded, not validated
    given = set(explicit)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ov.OverrideWarning)
        for item in overrides:
            if _apply(cfg, item, control["strict_overrides"], flag_by_name, task, schema, created, notes):
                given.add(item.dotted)
    notes += [str(w.message) for w in caught]

    kept = [(path, _pop_path(cfg, path)) for path in created]
    validated = validate(cfg, task.extra_flags, task.sections)
    drive = task.defaults.get("model§drive")  # the task's drive (the registry writes it there): not a choice
    if drive and validated.model.drive != drive:
        raise UserError(
            f"model§drive {validated.model.drive!r} (from the YAML or an override) is not task "
            f"{task.name!r}'s drive {drive!r}: a {task.name} run builds and records {drive}; remove the "
            "key or choose the task whose drive it is"
        )
    notes += refuse_unhonoured(task, validated, given, {f"json§{k}" for k in data_json})
    for note in notes:
        if not (layer and note in _LAST_NOTES):  # the second pass with --load_hf's layer says nothing twice
            print(f"warning: {note}", file=sys.stderr)
    _LAST_NOTES[:] = notes
    raw = validated.model_dump(mode="json", by_alias=True)
    for path, val in kept:  # the ancestor's rule: a new key is created (with a warning) and recorded
        _set(raw, path, val)
    return Resolved(validated, raw, control, given)


def _pop_path(cfg: dict, path: tuple[str, ...]):
    node = cfg
    for part in path[:-1]:
        node = node[part]
    return node.pop(path[-1])


def _typo(name: str, candidates) -> str | None:
    """A known name so close to ``name`` that ``name`` is a likely typo of it (ema_decya, num_epoch, LRdecay)."""
    return ov.closest_key(name, candidates, cutoff=TYPO_CUTOFF)


def _apply(
    cfg: dict, item: ov.Override, strict: bool, flag_by_name: dict, task: Task, schema, created: list, notes: list
) -> bool:
    """Apply one override; False when it was an ancestor no-op (named in ``notes``, nothing set)."""
    if len(item.path) == 1:
        name = item.path[0]
        if name in cfg and isinstance(cfg[name], dict):
            raise UserError(f"--{name} names a config section; set a key inside it, e.g. --{name}§KEY VALUE")
        note = ancestor_flag(name, item.raw, task.name, cfg)
        if note is not None:
            notes.append(note)
            return False
        hint = _typo(name, [f.name for f in CONTROL] + list(flag_by_name))
        if hint:
            raise UserError(f"unknown flag --{name} (did you mean --{hint}?)")
        if strict:
            raise UserError(f"unknown flag --{name} (--strict_overrides)")
        # the ancestor's rule: any other new flag becomes a top-level key, with a warning, and is recorded
        notes.append(
            f"unknown flag --{name}: created as top-level key '{name}' (recorded in resolved_config.yaml; "
            "nothing in this pipeline reads it)"
        )
        cfg[name] = ov.parse_new_value(item.raw)
        return True
    new_at = _new_typed_key(item.path, schema, task)
    if new_at is not None:
        depth, extra_allowed = new_at
        if strict:
            raise UserError(
                f"override --{item.dotted}: '{'§'.join(item.path[: depth + 1])}' does not exist (--strict_overrides)"
            )
        notes.append(
            f"override --{item.dotted}: '{'§'.join(item.path[: depth + 1])}' does not exist and is created "
            "(recorded in resolved_config.yaml; nothing in this task reads it)"
        )
        if not extra_allowed and item.path[: depth + 1] not in created:  # (the same new key may be given twice)
            created.append(item.path[: depth + 1])
        _set(cfg, item.path, ov.parse_new_value(item.raw))
        return True
    ov.apply_override(cfg, item, strict)
    return True


def _new_typed_key(path: tuple[str, ...], schema, task: Task) -> tuple[int, bool] | None:
    """Where ``path`` leaves the typed schema with a new key: (its depth, whether the model there allows extra
    keys); None when every part is known or the path enters a free mapping (a dict field: the grammar's own rules
    apply). A new key close to a known one is a typo (an error with the suggestion); a key of another task is an
    error naming that task."""
    model = schema
    for depth, part in enumerate(path):
        fields = {("json" if n == "paths" else n): info for n, info in model.model_fields.items()}
        if part not in fields:
            where = "§".join(path[: depth + 1])
            if where in UNREAD_JSON:  # the ancestor's JSON key: refused by name at the honour check
                return depth, True
            owner = task.owner_of(path[: depth + 1])
            if owner:
                raise UserError(f"unknown key {where}: it belongs to task {owner!r}, not {task.name!r}")
            hint = _typo(part, fields)
            if hint:
                parent = "§".join(path[:depth])
                raise UserError(
                    f"unknown key {where} (did you mean {parent + '§' if parent else ''}{hint}?); "
                    f"valid keys: {', '.join(sorted(fields))}"
                )
            return depth, model.model_config.get("extra") == "allow"
        ann = fields[part].annotation
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return None
        model = ann
    return None


def dump_yaml(raw: dict) -> str:
    return yaml.safe_dump(raw, sort_keys=False, default_flow_style=None, allow_unicode=True)
