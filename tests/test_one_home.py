"""One home per default (issue 35): a drive's typed config IS its keys, and a task's drive is written once.

For every registered task: each key section generated from a drive config dataclass has exactly the dataclass's
fields (less those the run sets) with the dataclass's defaults, every key of the task has a description, and the
resolved config (what --print_config prints) carries the registered drive.
"""

from __future__ import annotations

import dataclasses
import inspect
import sys

import pytest
import yaml
from pydantic import BaseModel

from Engineering.config.schema import COMMON_KEYS, drive_config, keys_from_dataclass
from Engineering.Engines import cli, registry

TASKS = sorted(registry.tasks())


def _models(model: type[BaseModel], path: str):
    """(path, model) of ``model`` and of every key model nested in it."""
    yield path, model
    for name, info in model.model_fields.items():
        if isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel):
            yield from _models(info.annotation, f"{path}§{name}")


def _key_models(task):
    for section, model in task.sections.items():
        yield from _models(model, section)


def _same(key_default, dc_default) -> bool:
    # a YAML list where the dataclass holds a tuple (ReStyle's blocks, StyleGAN2's blur_kernel) is the same value
    return key_default == dc_default or (isinstance(key_default, list) and tuple(key_default) == dc_default)


@pytest.mark.parametrize("name", TASKS)
def test_drive_keys_are_the_drive_config(name):
    for path, model in _key_models(registry.get(name)):
        source = getattr(model, "__drive_config__", None)
        if source is None:
            continue
        dc, exclude = source
        own = {f.name: f for f in dataclasses.fields(dc) if f.name not in exclude}
        assert set(own) <= set(model.model_fields), f"{path}: keys miss {set(own) - set(model.model_fields)}"
        for field_name, f in own.items():
            dc_default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            info = model.model_fields[field_name]
            assert _same(info.get_default(call_default_factory=True), dc_default), f"{path}§{field_name}"
            assert info.description == f.metadata["help"], f"{path}§{field_name}: the field's own meaning"


@pytest.mark.parametrize("name", TASKS)
def test_every_key_has_a_description(name):
    models = list(_key_models(registry.get(name))) + [(s, m) for s, m in COMMON_KEYS.items()]
    for path, model in models:
        for key, info in model.model_fields.items():
            ann = info.annotation
            if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
                assert (info.description or "").strip(), f"{path}§{key} has no description"


@pytest.mark.parametrize("name", TASKS)
def test_print_config_names_the_registered_drive(name, capsys):
    task = registry.get(name)
    if task.module.startswith("Engineering."):  # model§drive is written once: TaskSpec.drive
        assert '"model§drive"' not in inspect.getsource(sys.modules[task.module]), task.module
    assert cli.main(["--print_config"], task=name) == {}
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["drive"] == task.drive
    assert printed["model"]["tag"] == task.defaults.get("model§tag", task.drive)


def test_a_task_whose_defaults_name_another_drive_is_refused():
    from Engineering.errors import UserError

    spec = registry.TaskSpec(
        name="one_home_probe", description="x", drive="A", engine=object, module="probe", defaults={"model§drive": "B"}
    )
    with pytest.raises(UserError, match="defaults name model§drive 'B', its drive is 'A'"):
        registry.register(spec)
    assert "one_home_probe" not in registry.tasks()


@dataclasses.dataclass
class _Probe:
    width: int = dataclasses.field(default=4, metadata={"help": "channels."})
    taps: tuple = dataclasses.field(default=(1, 2), metadata={"help": "filter taps."})
    size: int = dataclasses.field(default=8, metadata={"help": "the run's image side."})


def test_drive_config_takes_every_shared_key_and_the_runs_values():
    Keys = keys_from_dataclass("ProbeKeys", _Probe, exclude=("size",), overrides={"taps": list[int]})
    assert Keys().taps == [1, 2] and Keys.model_fields["taps"].description == "filter taps."
    built = drive_config(_Probe, Keys(width=6, taps=[3, 4, 5]), size=16)
    assert built == _Probe(width=6, taps=(3, 4, 5), size=16)  # the YAML list becomes the dataclass's tuple
    with pytest.raises(TypeError):  # a key the run also gives has two homes
        drive_config(_Probe, Keys(), width=2)
    with pytest.raises(TypeError, match="has no default"):  # a required field is the run's: it is no key
        keys_from_dataclass("Bad", dataclasses.make_dataclass("D", [("n", int, dataclasses.field(kw_only=True))]))


def test_a_yaml_or_override_naming_another_drive_is_refused_and_the_tasks_own_is_accepted(tmp_path):
    from Engineering.config.loader import resolve
    from Engineering.errors import UserError

    diffae = registry.get("diffAE")
    with pytest.raises(UserError, match=r"model§drive 'pythae' \(from the YAML or an override\) is not task 'diffAE'"):
        resolve(["--model§drive", "pythae"], diffae)
    yml = tmp_path / "other.yaml"  # a recipe written for another task
    yml.write_text("model:\n  drive: pythae\n")
    with pytest.raises(UserError, match="model§drive 'pythae' .* is not task 'diffAE''s drive 'DiffAE'"):
        resolve(["--configyml_path", str(yml)], diffae)
    yml.write_text("model:\n  drive: DiffAE\n")  # the ancestor's YAMLs restate it: the task's own drive is fine
    assert resolve(["--configyml_path", str(yml)], diffae).cfg.model.drive == "DiffAE"
