"""The typed, validated configuration (pydantic), generated from the flag table and the YAML key models.

Sections: run, training, model, data, eval and json (the dataNpath JSON). A section's keys are its flags,
the keys every task has (the ``*Keys`` models below: one home per default) and the keys of the running task
(``Task.sections``, e.g. ``model§DiffAE``). An unknown key inside a section is an error listing the valid
keys; new top-level keys stay allowed (the ancestor's single-word flags, with a typo warning). Errors name
the key, the expected type and the value.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Annotated, Any, Optional, TypeVar, Union, cast

import pydantic
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr

from Engineering.config.flags import FLAGS, Flag
from Engineering.config.overrides import closest_key
from Engineering.config.validated import Config
from Engineering.errors import UserError

_TYPES: dict[str, Any] = {
    "int": StrictInt,
    "float": Union[StrictFloat, StrictInt],
    "str": StrictStr,
    "bool": StrictBool,
    "num": Union[StrictInt, StrictFloat],
    "ints": list[StrictInt],
    "optstr": Optional[StrictStr],
    "optfloat": Optional[StrictFloat | StrictInt],
}


class _Section(BaseModel):
    model_config = ConfigDict(extra="allow", validate_assignment=True, populate_by_name=True)


class Keys(BaseModel):
    """A typed group of YAML keys: unknown keys are errors (the message lists the valid ones)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, populate_by_name=True)


class StepLRKeys(Keys):
    """training§LRDecay§type1 (--lr_decay_type 1, StepLR)"""

    decay_every: int = Field(50, gt=0, description="Epochs between decays.")
    decay_rate: float = Field(0.1, gt=0, description="Factor applied to the learning rate.")


class PlateauKeys(Keys):
    """training§LRDecay§type2 (--lr_decay_type 2, ReduceLROnPlateau on the monitored loss)"""

    decay_rate: float = Field(0.1, gt=0, lt=1, description="Factor applied to the learning rate.")
    patience: int = Field(10, ge=0, description="Epochs without improvement before a decay.")
    threshold: float = Field(1e-4, ge=0, description="Relative improvement that counts.")
    cooldown: int = Field(0, ge=0, description="Epochs to wait after a decay.")
    min_lr: float = Field(0.0, ge=0, description="Lower bound of the learning rate.")


class CosineKeys(Keys):
    """training§LRDecay§type3 (--lr_decay_type 3, cosine annealing after a linear warm-up, per epoch)"""

    warmup_epochs: int = Field(1, ge=0, description="Epochs of linear warm-up from lr/10 to lr.")
    min_lr: float = Field(0.0, ge=0, description="The learning rate reached at the last epoch.")


class LRDecayKeys(Keys):
    """training§LRDecay"""

    type1: StepLRKeys = StepLRKeys()
    type2: PlateauKeys = PlateauKeys()
    type3: CosineKeys = CosineKeys()


class TrainingKeys(Keys):
    """training (YAML keys beside the flags)"""

    ema_decay: float = Field(0.9999, ge=0, lt=1, description="EMA decay of the weights (warm-up (1+n)/(10+n)).")
    ema_warmup: bool = Field(
        True,
        description="Decay min(ema_decay, (1+n)/(10+n)) at step n; false = the fixed "
        "ema_decay of DiffAE's and the ancestor's training (at 0.9999 a "
        "run of a few thousand steps tests near-initial weights).",
    )
    LRDecay: LRDecayKeys = LRDecayKeys()


class ModelKeys(Keys):
    """model (YAML keys beside the flags)"""

    drive: StrictStr = Field("", description="The WarpDrive of the run (set by the task).")
    tag: StrictStr = Field("", description="Last part of the composed run name.")


class DataKeys(Keys):
    """data (YAML keys beside the flags)"""

    flip_axes: list[StrictInt] = Field(
        [],
        description="Spatial axes eligible for random training flips "
        "(with --flip_prob); none by default: a left-right flip "
        "mirrors cardiac anatomy.",
    )


class EvalKeys(Keys):
    """eval (YAML keys beside the flags)"""

    n_preview: StrictInt = Field(4, ge=0, description="Subjects in the PNG preview grid.")
    output_chunk: StrictInt = Field(
        256,
        gt=0,
        description="Test samples held in memory before they are written "
        "to the run's output shards (bounds the memory of a "
        "whole-cohort inference).",
    )


class RunKeys(Keys):
    """run (recorded, not set by users)"""

    load_hf_revision: StrictStr = Field("", description="The Hub commit actually loaded by --load_hf.")


_DC = TypeVar("_DC")

COMMON_KEYS: dict[str, type[Keys]] = {
    "run": RunKeys,
    "training": TrainingKeys,
    "model": ModelKeys,
    "data": DataKeys,
    "eval": EvalKeys,
}


def _annotated(flag: Flag):
    """The flag's type with its bounds; floats are finite (--lr nan is an error, not a NaN loss)."""
    kw: dict[str, Any] = dict(flag.bounds)
    if flag.type in ("float", "num", "optfloat"):
        kw["allow_inf_nan"] = False
    if flag.type == "ints" and kw:  # a list's bounds hold for each element (--input_shape -3,0)
        return list[Annotated[StrictInt, Field(**kw)]]
    return Annotated[_TYPES[flag.type], Field(**kw)] if kw else _TYPES[flag.type]


def _fields(model: type[BaseModel]) -> dict:
    return {name: (info.annotation, info) for name, info in model.model_fields.items()}


def _section_model(section: str, extra_flags: tuple[Flag, ...], task_keys: type[BaseModel] | None) -> type[BaseModel]:
    """Flags of the section + the keys every task has + the running task's keys (nested flags such as
    model§pythae§model are fields of the task's key models)."""
    fields = {**_fields(COMMON_KEYS[section]), **(_fields(task_keys) if task_keys else {})}
    fields.update(
        {
            f.path[1]: (_annotated(f), f.default)
            for f in FLAGS + extra_flags
            if f.path[0] == section and len(f.path) == 2
        }
    )
    return pydantic.create_model(f"{section.capitalize()}Config", __base__=Keys, **fields)


class DataPaths(_Section):
    """The dataNpath JSON: where the data is and which datasets are selected."""

    run_prefix: StrictStr = "run"
    datadir: StrictStr = "@demo"
    datafile: StrictStr = "data.h5"
    foldCSV: StrictStr | StrictInt = ""
    save_path: StrictStr = "Results"
    tblog_path: StrictStr = ""
    is_complexDS: StrictBool = False
    DS_selected_primaries: list[StrictStr] | StrictStr = []
    DS_selected_auxiliaries: list[StrictStr] | StrictStr = []
    DS_every_primary: StrictBool = True
    DS_include_repeatAcq: StrictBool = False  # the ancestor read only the first acquisition (_0)
    DS_sanity_filters: dict[str, StrictInt] = {}
    DS_multi_channel: StrictBool = True
    DS_split_volume: StrictBool | None = None
    DS_split_time: StrictBool | None = None
    DS_channel_dim: StrictInt = 0
    DS_slice_dim: StrictInt = 2
    DS_phenotypes: dict[str, Any] | None = None
    DS_covariates: dict[str, Any] | None = None
    DS_confounders: dict[str, Any] = {}  # the ancestor's {path, cols, bincat_cols, mulcat_cols}


def key_defaults(sections: dict | None = None) -> dict:
    """Every typed YAML key with its default, as plain data: the loader starts from these (below the flags),
    so an override of a known key takes its type and ``--print_config`` shows every key."""
    out = {}
    for name, model in COMMON_KEYS.items():
        out[name] = model().model_dump(mode="json")
        if sections and name in sections:
            out[name].update(sections[name]().model_dump(mode="json"))
    return out


_SCHEMAS: dict = {}  # (flag ids, section ids) -> (the objects, the schema): creating pydantic models is slow


def build_schema(extra_flags: tuple[Flag, ...] = (), sections: dict | None = None) -> type[BaseModel]:
    sections = sections or {}
    key = (tuple(map(id, extra_flags)), tuple(sorted((k, id(v)) for k, v in sections.items())))
    hit = _SCHEMAS.get(key)
    if hit is not None and all(a is b for a, b in zip(hit[0], (*extra_flags, *sections.values()))):
        return hit[1]  # the same objects (ids of collected objects can be reused: checked by identity)
    schema = _build_schema(extra_flags, sections)
    _SCHEMAS[key] = ((*extra_flags, *sections.values()), schema)
    return schema


def _build_schema(extra_flags: tuple[Flag, ...], sections: dict) -> type[BaseModel]:
    unknown = sorted(set(sections) - set(COMMON_KEYS))
    if unknown:
        raise UserError(
            f"task key models for unknown section(s) {', '.join(unknown)}; sections: {', '.join(COMMON_KEYS)}"
        )
    models: dict[str, Any] = {s: (_section_model(s, extra_flags, sections.get(s)), ...) for s in COMMON_KEYS}
    # 'json' would shadow BaseModel.json: the attribute is cfg.paths, the key stays 'json'.
    return pydantic.create_model("Config", __base__=_Section, paths=(DataPaths, Field(alias="json")), **models)


def validate(cfg: dict, extra_flags: tuple[Flag, ...] = (), sections: dict | None = None) -> Config:
    """Validate the merged dict; one UserError line naming the first bad keys."""
    schema = build_schema(extra_flags, sections)
    try:
        # the model built above has the sections that Config states (their keys are known only at run time)
        return cast(Config, schema.model_validate(cfg))
    except pydantic.ValidationError as exc:
        problems = []
        for err in exc.errors()[:3]:
            parts = [p for p in err["loc"] if not _is_union_branch(p)]
            loc = "§".join(str(p) for p in parts).replace("paths", "json", 1)
            if err["type"] == "extra_forbidden":
                valid = _valid_keys(schema, parts[:-1])
                problems.append(
                    f"unknown key {loc}"
                    + (
                        f" (did you mean {'§'.join(map(str, parts[:-1]))}§{hint}?)"
                        if (hint := closest_key(str(parts[-1]), valid))
                        else ""
                    )
                    + f"; valid keys: {', '.join(valid)}"
                )
                continue
            problems.append(f"{loc}: {err['msg'].lower()} (got {err.get('input')!r})")
        raise UserError("invalid config: " + "; ".join(problems)) from None


def _valid_keys(model, path) -> list[str]:
    for part in path:
        info = model.model_fields.get("paths" if part == "json" else part)
        model = getattr(info, "annotation", None)
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return []
    return sorted(model.model_fields)


def _is_union_branch(part) -> bool:
    # pydantic reports which Union branch failed ('int', 'list[str]'): noise for a user.
    return isinstance(part, str) and ("[" in part or part in {"int", "float", "str", "bool"})


def keys_from_dataclass(
    name: str,
    dc: type,
    exclude: tuple[str, ...] = (),
    doc: str = "",
    overrides: dict[str, Any] | None = None,
    **extra: Any,
) -> type[Keys]:
    """A key model whose fields and defaults ARE a drive's config dataclass (one home per default): the
    dataclass's own defaults and types, each field's ``metadata["help"]`` as its description; ``exclude``: the
    fields the run sets (channels, shape, latent_dim); ``overrides`` gives a field another YAML type (name -> type;
    a tuple default becomes a list for a list type), ``extra`` adds keys the engine reads (name -> (type, Field)).
    The model records its dataclass and exclusions (``__drive_config__``) for the tests that hold them equal."""
    hints = typing.get_type_hints(dc)
    fields: dict[str, Any] = {}
    for f in dataclasses.fields(dc):
        if f.name in exclude:
            continue
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            raise TypeError(f"{dc.__name__}.{f.name} has no default: a key needs one (exclude it: the run sets it)")
        typ = (overrides or {}).get(f.name, hints[f.name])
        if isinstance(default, tuple) and typing.get_origin(typ) is list:
            default = list(default)
        fields[f.name] = (typ, Field(default, description=f.metadata.get("help", "")))
    fields.update(extra)
    model = pydantic.create_model(name, __base__=Keys, **fields)
    model.__doc__ = doc
    model.__drive_config__ = (dc, tuple(exclude))  # type: ignore[attr-defined]
    return model


def drive_config(dc: type[_DC], keys: BaseModel, **given: Any) -> _DC:
    """The drive config ``dc`` from its key section: every key that is a field of ``dc`` (a list where the field
    is a tuple becomes one), plus ``given``, what the run decides (channels, shape, latent_dim); the dataclass
    validates. The one place where keys become a drive: no engine restates the fields."""
    hints = typing.get_type_hints(dc)
    values: dict[str, Any] = {}
    for f in dataclasses.fields(dc):  # type: ignore[arg-type]
        if f.init and f.name in type(keys).model_fields:  # (a key the run also gives: a TypeError)
            value = getattr(keys, f.name)
            if isinstance(value, list) and (hints[f.name] is tuple or typing.get_origin(hints[f.name]) is tuple):
                value = tuple(value)
            values[f.name] = value
    return dc(**values, **given)
