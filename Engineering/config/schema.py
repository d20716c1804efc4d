"""The typed, validated configuration (pydantic), generated from the flag table.

Sections: run, training, model, data, eval (flags + YAML extras such as
``training§LRDecay`` or ``model§DiffAE``) and json (the dataNpath JSON). Unknown
keys are kept (path overrides may add them); known keys must have their type.
Errors name the key, the expected type and the value.
"""
from __future__ import annotations

from typing import Annotated, Any, Optional, Union

import pydantic
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr

from Engineering.config.flags import FLAGS, Flag
from Engineering.errors import UserError

_TYPES: dict[str, Any] = {
    "int": StrictInt,
    "float": Union[StrictFloat, StrictInt],
    "str": StrictStr,
    "bool": StrictBool,
    "num": Union[StrictInt, StrictFloat],
    "ints": list[StrictInt],
    "optstr": Optional[StrictStr],
    "optfloat": Optional[Union[StrictFloat, StrictInt]],
}


class _Section(BaseModel):
    model_config = ConfigDict(extra="allow", validate_assignment=True, populate_by_name=True)


def _annotated(flag: Flag):
    """The flag's type with its bounds; floats are finite (--lr nan is an error, not a NaN loss)."""
    kw = dict(flag.bounds)
    if flag.type in ("float", "num", "optfloat"):
        kw["allow_inf_nan"] = False
    return Annotated[_TYPES[flag.type], Field(**kw)] if kw else _TYPES[flag.type]


def _section_model(section: str, extra_flags: tuple[Flag, ...]) -> type[BaseModel]:
    fields = {f.path[1]: (_annotated(f), f.default) for f in FLAGS + extra_flags
              if f.path[0] == section and len(f.path) == 2}
    return pydantic.create_model(f"{section.capitalize()}Config", __base__=_Section, **fields)


class DataPaths(_Section):
    """The dataNpath JSON: where the data is and which datasets are selected."""

    run_prefix: StrictStr = "run"
    datadir: StrictStr = "@demo"
    datafile: StrictStr = "data.h5"
    foldCSV: Union[StrictStr, StrictInt] = ""
    save_path: StrictStr = "Results"
    tblog_path: StrictStr = ""
    is_complexDS: StrictBool = False
    DS_selected_primaries: Union[list[StrictStr], StrictStr] = []
    DS_selected_auxiliaries: Union[list[StrictStr], StrictStr] = []
    DS_every_primary: StrictBool = True
    DS_include_repeatAcq: StrictBool = False  # the ancestor read only the first acquisition (_0)
    DS_sanity_filters: dict[str, StrictInt] = {}
    DS_multi_channel: StrictBool = True
    DS_split_volume: Optional[StrictBool] = None
    DS_split_time: Optional[StrictBool] = None
    DS_channel_dim: StrictInt = 0
    DS_slice_dim: StrictInt = 2
    DS_phenotypes: Optional[dict[str, Any]] = None
    DS_covariates: Optional[dict[str, Any]] = None


def build_schema(extra_flags: tuple[Flag, ...] = ()) -> type[BaseModel]:
    sections = {s: (_section_model(s, extra_flags), ...) for s in ("run", "training", "model", "data", "eval")}
    # 'json' would shadow BaseModel.json: the attribute is cfg.paths, the key stays 'json'.
    return pydantic.create_model("Config", __base__=_Section, paths=(DataPaths, Field(alias="json")), **sections)


def validate(cfg: dict, extra_flags: tuple[Flag, ...] = ()):
    """Validate the merged dict; one UserError line naming the first bad keys."""
    try:
        return build_schema(extra_flags).model_validate(cfg)
    except pydantic.ValidationError as exc:
        problems = []
        for err in exc.errors()[:3]:
            loc = "§".join(str(p) for p in err["loc"] if not _is_union_branch(p)).replace("paths", "json", 1)
            problems.append(f"{loc}: {err['msg'].lower()} (got {err.get('input')!r})")
        raise UserError("invalid config: " + "; ".join(problems)) from None


def _is_union_branch(part) -> bool:
    # pydantic reports which Union branch failed ('int', 'list[str]'): noise for a user.
    return isinstance(part, str) and ("[" in part or part in {"int", "float", "str", "bool"})
