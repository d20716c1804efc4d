"""Run folders are never shared by two configurations (issue 33, item 3).

Two halves. The run name carries what tells runs on the same data apart: the task's own parts (its registered
``run_name_parts``, e.g. the ancestor's ``pythaemodel-<name>``), the spatial dimensionality where it is not the
task's default, and where the weights came from (``--load_hf``, ``--preweights_path``, and for a test
``--load_model_4test`` of another run). And a guard for what names cannot catch (``--fulltrainID``, two
latent sizes under one ``--trainID``): a run folder whose ``resolved_config.yaml`` records another model is
refused, with the flags that give a new folder; an ``Output[_suffix]/`` of another configuration is never
replaced; replacing one of the same configuration is said.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from Engineering.config import Config
from Engineering.config.loader import dump_yaml
from Engineering.errors import UserError

CONFIG_NAME = "resolved_config.yaml"
CHECKPOINTS = "Checkpoints"
WEIGHT_KEYS = ("load_hf", "preweights_path")  # run§ keys: where a run's initial weights came from


def slug(text: str, limit: int = 60) -> str:
    """A run-name part from a path or a Hub id: its last component, in characters safe in a folder name."""
    last = str(text).replace("\\", "/").rstrip("/").split("/")[-1] or str(text)
    return re.sub(r"[^A-Za-z0-9._=+-]+", "-", last).strip("-.")[:limit] or "x"


def weights_name(path: str) -> str:
    """The run a checkpoint belongs to (``<run>/Checkpoints/x.ckpt``, ``<run>/Checkpoints``, ``<run>``), else the
    file's stem."""
    p = Path(str(path)).expanduser()
    if p.parent.name == CHECKPOINTS:
        return p.parent.parent.name
    if p.name == CHECKPOINTS:
        return p.parent.name
    return p.stem if p.suffix in (".ckpt", ".pt", ".pth", ".safetensors", ".bin") else p.name


def compose(cfg: Config, task, base: str) -> str:
    """``base`` (prefix, trainID, fold, precision, tag) + the task's parts + the parts every task gets: the
    dimensionality where it is not the task's default and where the weights came from."""
    parts = list(task.run_name_parts(cfg)) if task.run_name_parts else []
    is3D = bool(cfg.model.is3D)
    if is3D != bool(task.defaults.get("is3D", False)):
        parts.append("3D" if is3D else "2D")
    r = cfg.run
    if r.load_hf:
        parts.append(f"hf-{slug(r.load_hf)}")
    if r.preweights_path:
        parts.append(f"pre-{slug(weights_name(r.preweights_path))}")
    name = base + "".join(f"_{slug(p)}" for p in parts)
    if r.run_mode == 2 and r.load_model_4test:
        source = slug(weights_name(r.load_model_4test))
        if source != name:  # a test of this very run's checkpoints keeps its name
            name += f"_test-{source}"
    return name


def _plain(raw: dict) -> dict:
    """The config as resolved_config.yaml holds it (what a later run reads back)."""
    return yaml.safe_load(dump_yaml(raw)) or {}


def identity(raw: dict) -> dict:
    """What makes a run folder's checkpoints what they are: the model section and the initial weights' source."""
    run = raw.get("run") or {}
    return {"model": raw.get("model") or {}, "run": {k: run.get(k) for k in WEIGHT_KEYS}}


def _flat(d, prefix: str = "") -> dict:
    if not isinstance(d, dict):
        return {prefix: d}
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}§{k}" if prefix else str(k)))
    return out


def differences(stored: dict, new: dict) -> list[str]:
    """``key: there -> here`` for every key whose value differs (a key only one side has included)."""
    a, b = _flat(stored), _flat(new)
    missing = "(absent)"
    return [
        f"{k} {a.get(k, missing)!r} there, {b.get(k, missing)!r} here"
        for k in sorted(set(a) | set(b), key=str)
        if a.get(k, missing) != b.get(k, missing)
    ]


def _read(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        stored = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError, ValueError) as exc:  # ValueError: bytes that are not text
        raise UserError(
            f"{path} cannot be read ({exc}); it records which configuration owns that folder: "
            "repair it or choose another --trainID / --fulltrainID"
        ) from None
    bad = (
        next((k for k in ("model", "run") if not isinstance(stored.get(k) or {}, dict)), None)
        if isinstance(stored, dict)
        else type(stored).__name__
    )
    if bad:  # a list, or a section that is a scalar: not a config we wrote
        raise UserError(
            f"{path} is not a resolved config ({bad!r} is not a mapping); it records which "
            "configuration owns that folder: repair it or choose another --trainID / --fulltrainID"
        )
    return stored


def _listed(diff: list[str]) -> str:
    return "; ".join(diff[:3]) + (f"; and {len(diff) - 3} more" if len(diff) > 3 else "")


def record_path(run_dir: Path, out_dir: Path) -> Path:
    """Where a test-only run in an existing run folder records its configuration (the training's stays)."""
    return run_dir / f"resolved_config_{out_dir.name}.yaml"


def has_outputs(out_dir: Path) -> bool:
    return out_dir.is_dir() and any(out_dir.iterdir())


def check(
    raw: dict, run_dir: Path, out_dir: Path, mode: int, tests: bool, say: bool = True, resuming: bool = False
) -> bool:
    """Refuse (one UserError line) to reuse a run folder or replace an Output folder of another configuration;
    say when an Output folder of the same configuration is replaced. Returns whether the run folder's
    resolved_config.yaml is this run's to write (False: a test of another configuration, which records its
    config beside it as resolved_config_<Output folder>.yaml instead)."""
    mine = identity(_plain(raw))
    suffix = (raw.get("run") or {}).get("output_suffix") or ""
    stored = _read(run_dir / CONFIG_NAME)
    owner = True
    if stored is not None:
        diff = differences(identity(stored), mine)
        if diff:
            what = f"run folder {run_dir} holds a run of another configuration ({_listed(diff)})"
            if mode != 2:
                raise UserError(
                    f"{what}: pass --trainID NAME or --fulltrainID NAME for a new run folder (a run "
                    "folder is never reused by another configuration)"
                )
            if not suffix:
                raise UserError(
                    f"{what}: pass --output_suffix NAME to test into Output_NAME beside its outputs, or "
                    "--trainID NAME / --fulltrainID NAME for a new run folder"
                )
            owner = False
            if say:
                print(
                    f"notice: {what}; this test writes into {out_dir.name}/ and records its configuration as "
                    f"{record_path(run_dir, out_dir).name}"
                )
        elif say and mode != 2 and not resuming and (run_dir / CHECKPOINTS / "last.ckpt").exists():
            print(
                f"notice: run folder {run_dir} already holds checkpoints of this configuration: this run trains "
                "from scratch, replaces last.ckpt and writes its best checkpoint beside the earlier ones (--resume "
                "continues instead; --trainID NAME keeps the runs apart)"
            )
    if tests and has_outputs(out_dir):
        record = _read(record_path(run_dir, out_dir)) or stored
        if record is not None:
            diff = differences(identity(record), mine)
            if diff:
                raise UserError(
                    f"{out_dir} holds the outputs of another configuration ({_listed(diff)}): pass "
                    "--output_suffix NAME to write Output_NAME beside it"
                )
        if say:
            print(f"notice: {out_dir} exists: this test's outputs replace it (--output_suffix NAME keeps both)")
    return owner
