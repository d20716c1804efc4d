"""The override grammar, precedence, typing and errors of the configuration."""
from __future__ import annotations

import json

import pytest
import yaml

from Engineering.config.loader import Task, resolve, split_argv
from Engineering.errors import UserError
from tests.conftest import REPO, run_executor


@pytest.fixture
def task(tmp_path):
    yml = tmp_path / "cfg.yaml"
    yml.write_text(yaml.safe_dump({
        "training": {"batch_size": 16, "LRDecay": {"type1": {"decay_rate": 0.1, "decay_every": 5}}, "flag": True},
        "model": {"DiffAE": {"ch_mult": [1, 2], "opts": {"loss_fn": "l2"}}, "latent_dim": 12},
    }))
    js = tmp_path / "data.json"
    js.write_text(json.dumps({"datadir": "/data", "foldCSV": "folds.csv", "latent_dim": 20,
                              "DS_sanity_filters": {"dim1": 50}}))
    return Task("t", "test", configyml=str(yml), datajson=str(js), defaults={"lr": 0.5})


def test_precedence_defaults_yaml_json_flags_overrides(task):
    r = resolve([], task)
    assert r.cfg.training.lr == 0.5  # task default
    assert r.cfg.training.batch_size == 16  # YAML over flag default
    assert r.cfg.model.latent_dim == 20  # JSON over YAML
    r = resolve(["--latent_dim", "30"], task)
    assert r.cfg.model.latent_dim == 30  # explicit flag over JSON (the ancestor got this wrong)
    r = resolve(["--latent_dim", "30", "--model§latent_dim", "40"], task)
    assert r.cfg.model.latent_dim == 40  # path override over everything


def test_override_forms_and_types(task):
    r = resolve(["--training§LRDecay§type1§decay_rate", "0.2", "--training$LRDecay$type1$decay_every=7",
                 "--x", "-5", "--k=a=b", "--training§flag", "no", "--model§DiffAE§ch_mult", "[1,2,4]",
                 "--model§DiffAE§opts", "{loss_fn: l1}", "--json§DS_sanity_filters§dim1", "30",
                 "--json§datadir", "/other"], task)
    raw = r.raw
    assert raw["training"]["LRDecay"]["type1"] == {"decay_rate": 0.2, "decay_every": 7}
    assert raw["x"] == -5 and raw["k"] == "a=b"
    assert raw["training"]["flag"] is False
    assert raw["model"]["DiffAE"]["ch_mult"] == [1, 2, 4]
    assert raw["model"]["DiffAE"]["opts"] == {"loss_fn": "l1"}
    assert r.cfg.paths.DS_sanity_filters == {"dim1": 30} and r.cfg.paths.datadir == "/other"


def test_new_keys_parse_as_yaml(task):
    r = resolve(["--training§newlist", "[1,2]", "--training§newdict", "{a: 1}", "--training§newfloat", "1e-3",
                 "--training§newstr", "hello"], task)
    t = r.raw["training"]
    assert t["newlist"] == [1, 2] and t["newdict"] == {"a": 1} and t["newfloat"] == pytest.approx(1e-3)
    assert t["newstr"] == "hello"


def test_negative_and_exponent_values_for_flags(task):
    r = resolve(["--zscore_mean", "-1e-3", "--seed", "-5"], task)  # (a negative lr is now an error)
    assert r.cfg.data.zscore_mean == pytest.approx(-1e-3) and r.cfg.training.seed == -5


def test_new_key_warns_with_closest_and_strict_errors(task, capsys):
    resolve(["--training§LRdecay§x", "1"], task)
    assert "did you mean 'LRDecay'" in capsys.readouterr().out
    with pytest.raises(UserError, match="LRdecay.*did you mean 'LRDecay'"):
        resolve(["--training§LRdecay§x", "1", "--strict_overrides"], task)
    resolve(["--batchsize", "3"], task)
    assert "did you mean --batch_size" in capsys.readouterr().out
    with pytest.raises(UserError, match="batchsize"):
        resolve(["--batchsize", "3", "--strict_overrides", "true"], task)


def test_path_through_scalar_and_bad_type_are_errors(task):
    with pytest.raises(UserError, match=r"training§batch_size.*is a value"):
        resolve(["--training§batch_size§x", "1"], task)
    with pytest.raises(UserError, match=r"training§batch_size.*cannot take 'abc' as int"):
        resolve(["--training§batch_size", "abc"], task)
    with pytest.raises(UserError, match=r"json§DS_every_primary.*bool"):
        resolve(["--json§DS_every_primary", "maybe"], task)


def test_typed_validation_names_key_type_value(task, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("training:\n  batch_size: four\n")
    with pytest.raises(UserError, match=r"training§batch_size.*integer.*'four'"):
        resolve(["--configyml_path", str(bad)], task)


def test_bool_flag_forms(task):
    assert resolve(["--is3D"], task).cfg.model.is3D is True
    assert resolve(["--is3D", "false"], task).cfg.model.is3D is False
    assert resolve(["--is3D", "true"], task).cfg.model.is3D is True
    assert resolve(["--no-tbactive"], task).cfg.run.tbactive is False
    assert resolve(["--is3D", "1"], task).cfg.model.is3D is True


def test_no_abbreviation_capture(task):
    # '--batch' must not be taken as '--batch_size'
    flags, overrides = split_argv(["--batch", "3"], {"batch_size": "value"})
    assert flags == [] and overrides[0].path == ("batch",)
    r = resolve(["--batch", "3"], task)
    assert r.cfg.training.batch_size == 16 and r.raw["batch"] == 3


def test_missing_files_are_clear_errors(task, tmp_path):
    with pytest.raises(UserError, match="config YAML not found"):
        resolve(["--configyml_path", str(tmp_path / "nope.yaml")], task)
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON"):
        resolve(["--datajson_path", str(tmp_path / "broken.json")], task)


def test_print_config_with_no_other_argument():
    proc = run_executor("main_diffAE.py", "--print_config")
    assert proc.returncode == 0, proc.stderr
    cfg = yaml.safe_load(proc.stdout)
    assert cfg["model"]["drive"] == "DiffAE" and cfg["json"]["datadir"] == "@demo"
    assert cfg["training"]["batch_size"] == 16


def test_executor_bad_override_exit_2_one_line():
    proc = run_executor("main_diffAE.py", "--training§batch_size", "abc", "--print_config")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "training§batch_size" in lines[0]
    proc = run_executor("main_diffAE.py", "--training§batch_size", "abc", "--print_config", "--debug")
    assert proc.returncode != 0 and "Traceback" in proc.stderr


def test_readme_documents_every_flag():
    from Engineering.config.docs import BEGIN, END
    from Engineering.Engines.docs import tables

    text = (REPO / "README.md").read_text()
    block = text.split(BEGIN)[1].split(END)[0]
    assert block.strip() == tables().strip(), "run: python -m Engineering.Engines.docs --write"
