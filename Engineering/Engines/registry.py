"""The one registry of tasks: what a model family contributes to the pipeline, registered next to its code.

As timm's ``register_model``: a module that defines an engine calls :func:`register` with a :class:`TaskSpec`
(its LightningModule, its WarpDrive name, flags, defaults, YAML defaults file, typed YAML sections and optional
hooks). MainEngine, the docs generator, the saved-run loader and the hub loader look tasks up here and name no
model. Built-in tasks are the family packages of ``Engineering/Engines/WarpDrives/`` (one folder per family: its
pure-torch ``network``, its engine(s), keys, flags and extra steps, and the ``register`` call in its ``__init__``),
imported on first use; tasks from outside the repository come from ``--plugins mod[,mod]`` or
``$IMLATENT_PLUGINS`` and have the same shape.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from Engineering.config.honour import STANDARD
from Engineering.config.loader import Task
from Engineering.config.overrides import closest_key
from Engineering.Engines.WarpDrives.errors import DriveError
from Engineering.errors import UserError, user_facing

if TYPE_CHECKING:
    from Engineering.config import Config
    from Engineering.io.hub import HubModel

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "Configs"
PLUGINS_ENV = "IMLATENT_PLUGINS"
user_facing(DriveError)  # a drive's own ValueError is one line and exit 2 at the CLI


@dataclass
class TaskSpec(Task):
    """A task. ``engine(cfg, in_channels)`` builds its LightningModule (a class, or "module:attr" imported when
    first needed); ``lifecycle`` is how a run of it is built (None: the image autoencoder run of MainEngine).
    ``published(hub, cfg)`` maps weights of a foreign layout read by ``--load_hf`` onto the drive."""

    honours: frozenset | None = STANDARD  # the common flags/keys it honours (config/honour.py); others are refused
    drive: str = ""  # the model§drive value its runs carry (checkpoints, Hub config.json)
    engine: Any = None
    lifecycle: Any = None
    published: Callable[[HubModel, Config], HubModel] | None = None
    steps: tuple = ()  # extra output steps after the test phase: classes (or objects, or "module:attr") with
    #                    check(cfg, data) before training and run(cfg, model, data, out_dir) -> dict after it
    module: str = ""  # where it was registered (for messages)
    # code key -> the built-in names a downloaded config or a checkpoint may use there (untrusted.refuse_code)
    code_names: dict = field(default_factory=dict)
    # run_name_parts(cfg) -> ["pythaemodel-vae", ...]: what tells this task's runs apart on the same data (its model
    # variant), appended to the composed run name so that two variants never share a run folder
    run_name_parts: Callable[[Config], Sequence[str]] | None = None
    # its one-batch dev run (tests/test_every_task.py runs every registered task so; a new family is tested by
    # registering it): the spatial dims it supports (a points task: its points' dims), the flags of a tiny fast
    # run, and flag -> the task whose run folder it reads (its dev run is made first)
    dims: tuple[int, ...] = (2,)
    dev_args: tuple[str, ...] = ()
    upstream: dict[str, str] = field(default_factory=dict)

    def owner_of(self, path: tuple[str, ...]) -> str | None:
        for spec in tasks().values():
            if spec.name == self.name:
                continue
            section, _, rest = ("§".join(path)).partition("§")
            if section in spec.sections and rest.split("§")[0] in spec.sections[section].model_fields:
                return spec.name
            if any(f.path[: len(path)] == path for f in spec.extra_flags):
                return spec.name
        return None

    def engine_class(self):
        return _resolve(self.engine, f"task {self.name!r} engine")

    def step_objects(self) -> list:
        made = [_resolve(s, f"task {self.name!r} step") if isinstance(s, str) else s for s in self.steps]
        return [s() if isinstance(s, type) else s for s in made]  # a class: a fresh step per run

    def lifecycle_class(self):
        return _resolve(self.lifecycle, f"task {self.name!r} lifecycle") if self.lifecycle else None


_TASKS: dict[str, TaskSpec] = {}
_BUILTINS_LOADED = False


def register(spec: TaskSpec) -> TaskSpec:
    """Add a task (the call every built-in and plug-in module makes once, at import)."""
    other = _TASKS.get(spec.name)
    if other is not None and other.module != spec.module:
        raise UserError(f"task {spec.name!r} is registered twice ({other.module} and {spec.module})")
    if not spec.drive:
        raise UserError(f"task {spec.name!r} ({spec.module}) names no drive")
    if spec.defaults.get("model§drive", spec.drive) != spec.drive:
        raise UserError(
            f"task {spec.name!r} ({spec.module}): defaults name model§drive "
            f"{spec.defaults['model§drive']!r}, its drive is {spec.drive!r} (drive= is its one home)"
        )
    # model§drive written once (drive=); the run-name tag is the drive unless the task names another
    spec.defaults = {"model§drive": spec.drive, "model§tag": spec.drive, **spec.defaults}
    _TASKS[spec.name] = spec
    return spec


def _resolve(ref, what: str):
    if not isinstance(ref, str):
        return ref
    module, _, attr = ref.partition(":")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise UserError(f"{what} {ref!r} cannot be loaded: {exc}") from None


def _load_builtins() -> None:
    global _BUILTINS_LOADED
    if _BUILTINS_LOADED:
        return
    _BUILTINS_LOADED = True
    from Engineering.Engines import WarpDrives

    # every sub-package is a family (shared modules such as resnet.py are plain modules): a new family is a folder
    for info in sorted(pkgutil.iter_modules(WarpDrives.__path__), key=lambda m: m.name.lower()):
        if info.ispkg:
            importlib.import_module(f"{WarpDrives.__name__}.{info.name}")


def load_plugins(names: Sequence[str] = ()) -> list[str]:
    """Import plug-in modules (``--plugins`` first, then ``$IMLATENT_PLUGINS``); each registers its tasks."""
    wanted = [n.strip() for part in (*names, os.environ.get(PLUGINS_ENV, "")) for n in part.split(",") if n.strip()]
    for name in dict.fromkeys(wanted):
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise UserError(f"--plugins {name}: cannot import it ({exc}); is its folder on PYTHONPATH?") from None
    return wanted


def tasks() -> dict[str, TaskSpec]:
    _load_builtins()
    return dict(_TASKS)


def builtin_tasks() -> list[TaskSpec]:
    """The tasks of this repository (docs/ documents these), in registration order."""
    return [t for t in tasks().values() if t.module.startswith("Engineering.")]


def get(name: str) -> TaskSpec:
    found = tasks()
    if name not in found:
        hint = closest_key(name, list(found))
        raise UserError(
            f"unknown task {name!r}"
            + (f" (did you mean {hint!r}?)" if hint else "")
            + f"; registered tasks: {', '.join(sorted(found))}"
        )
    return found[name]


@contextmanager
def drive_errors():
    """A drive's own error (a ValueError subclass) as the engines' UserError, where the engine level builds a drive
    or loads its weights (run_cli prints either as one line)."""
    try:
        yield
    except DriveError as exc:
        raise UserError(str(exc)) from None


def for_drive(drive: str, where: str) -> TaskSpec:
    """The task whose runs carry model§drive ``drive`` (a checkpoint's or a Hub config's)."""
    for spec in tasks().values():
        if spec.drive == drive:
            return spec
    raise UserError(
        f"{where} names model§drive {drive!r}, which no registered task provides "
        f"({', '.join(sorted({t.drive for t in tasks().values()}))}; a plug-in task needs --plugins)"
    )
