"""The override grammar, precedence, typing and errors of the configuration."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml

from Engineering.config.loader import Task, resolve, split_argv
from Engineering.config.schema import Keys
from Engineering.errors import UserError
from tests.conftest import REPO, run_executor


class _TrainingKeys(Keys):  # the typed YAML keys the grammar tests use (an undeclared key is an error)
    flag: bool = False
    newlist: Any = None
    newdict: Any = None
    newfloat: Any = None
    newstr: Any = None


class _DiffAEKeys(Keys):
    ch_mult: list[int] = [1]
    opts: dict = {}


class _ModelKeys(Keys):
    DiffAE: _DiffAEKeys = _DiffAEKeys()


@pytest.fixture
def task(tmp_path):
    yml = tmp_path / "cfg.yaml"
    yml.write_text(
        yaml.safe_dump(
            {
                "training": {
                    "batch_size": 16,
                    "LRDecay": {"type1": {"decay_rate": 0.1, "decay_every": 5}},
                    "flag": True,
                },
                "model": {"DiffAE": {"ch_mult": [1, 2], "opts": {"loss_fn": "l2"}}, "latent_dim": 12},
            }
        )
    )
    js = tmp_path / "data.json"
    js.write_text(
        json.dumps({"datadir": "/data", "foldCSV": "folds.csv", "latent_dim": 20, "DS_sanity_filters": {"dim1": 50}})
    )
    return Task(
        "t",
        "test",
        configyml=str(yml),
        datajson=str(js),
        defaults={"lr": 0.5},
        sections={"training": _TrainingKeys, "model": _ModelKeys},
    )


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
    r = resolve(
        [
            "--training§LRDecay§type1§decay_rate",
            "0.2",
            "--training$LRDecay$type1$decay_every=7",
            "--x",
            "-5",
            "--k=a=b",
            "--training§flag",
            "no",
            "--model§DiffAE§ch_mult",
            "[1,2,4]",
            "--model§DiffAE§opts",
            "{loss_fn: l1}",
            "--json§DS_sanity_filters§dim1",
            "30",
            "--json§datadir",
            "/other",
        ],
        task,
    )
    raw = r.raw
    assert raw["training"]["LRDecay"]["type1"] == {"decay_rate": 0.2, "decay_every": 7}
    assert raw["x"] == -5 and raw["k"] == "a=b"
    assert raw["training"]["flag"] is False
    assert raw["model"]["DiffAE"]["ch_mult"] == [1, 2, 4]
    assert raw["model"]["DiffAE"]["opts"] == {"loss_fn": "l1"}
    assert r.cfg.paths.DS_sanity_filters == {"dim1": 30} and r.cfg.paths.datadir == "/other"


def test_new_keys_parse_as_yaml(task):
    r = resolve(
        [
            "--training§newlist",
            "[1,2]",
            "--training§newdict",
            "{a: 1}",
            "--training§newfloat",
            "1e-3",
            "--training§newstr",
            "hello",
        ],
        task,
    )
    t = r.raw["training"]
    assert t["newlist"] == [1, 2] and t["newdict"] == {"a": 1} and t["newfloat"] == pytest.approx(1e-3)
    assert t["newstr"] == "hello"


def test_negative_and_exponent_values_for_flags(task):
    r = resolve(["--zscore_mean", "-1e-3", "--norm_type", "zscore", "--zscore_std", "2e0"], task)  # (a negative
    assert r.cfg.data.zscore_mean == pytest.approx(-1e-3) and r.cfg.data.zscore_std == 2  # lr/seed is an error)


def test_typo_is_an_error_other_new_keys_are_created_and_recorded(task, capsys):
    # a key or flag close to a known one is a likely typo: an error with the suggestion (and the valid keys)
    with pytest.raises(
        UserError,
        match=r"unknown key training§LRdecay \(did you mean training§LRDecay\?\); "
        r"valid keys: .*LRDecay",
    ):
        resolve(["--training§LRdecay§x", "1"], task)
    with pytest.raises(UserError, match=r"unknown key training§ema_decya \(did you mean training§ema_decay\?\)"):
        resolve(["--training§ema_decya", "0.9"], task)
    with pytest.raises(UserError, match=r"^unknown flag --batchsize \(did you mean --batch_size\?\)$"):
        resolve(["--batchsize", "3"], task)
    with pytest.raises(UserError, match=r"unknown flag --num_epoch \(did you mean --num_epochs\?\)"):
        resolve(["--num_epoch", "1"], task)
    # any other new key or flag is created with a warning (the ancestor's documented rule) and recorded
    r = resolve(["--training§prova", "testing", "--model§DiffAE§opts§new", "3", "--brandnew", "7"], task)
    err = capsys.readouterr().err
    assert "training§prova' does not exist and is created" in err and "unknown flag --brandnew" in err
    assert r.raw["training"]["prova"] == "testing" and r.raw["brandnew"] == 7
    assert r.raw["model"]["DiffAE"]["opts"] == {"loss_fn": "l2", "new": 3}
    assert "training§prova" in r.explicit
    r = resolve(["--model§toy§width", "3", "--model§toy§width", "4", "--model§toy§depth", "2"], task)  # twice
    assert r.raw["model"]["toy"] == {"width": 4, "depth": 2}
    with pytest.raises(UserError, match=r"training§prova' does not exist \(--strict_overrides\)"):
        resolve(["--training§prova", "testing", "--strict_overrides"], task)
    with pytest.raises(UserError, match="brandnew"):
        resolve(["--brandnew", "3", "--strict_overrides", "true"], task)


def test_values_never_start_with_two_dashes_and_bare_unknown_flags_are_true(task):
    # the repro: an unknown flag followed by a flag took that flag as its value
    flags, overrides = split_argv(
        ["--print_config", "--brandnew", "--no-keep_cont"], {"print_config": "bool", "no-keep_cont": "none"}
    )
    assert flags == ["--print_config", "--no-keep_cont"] and overrides[0].raw == "true"
    r = resolve(["--brandnew", "--no-tbactive", "--other_new"], task)
    assert r.raw["brandnew"] is True and r.raw["other_new"] is True and r.cfg.run.tbactive is False
    r = resolve(["--brandnew", "--print_config"], task)
    assert r.control["print_config"] is True  # printing, not training
    with pytest.raises(UserError, match=r"flag --lr needs a value \(got the flag --print_config\)"):
        resolve(["--lr", "--print_config"], task)
    with pytest.raises(UserError, match=r"override --training§newstr needs a value"):
        resolve(["--training§newstr", "--print_config"], task)
    assert resolve(["--seed", "5", "--zscore_mean", "-5", "--norm_type", "zscore"], task).cfg.data.zscore_mean == -5


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
    r = resolve(["--batchx", "3"], task)
    assert r.cfg.training.batch_size == 16 and r.raw["batchx"] == 3


def test_missing_files_are_clear_errors(task, tmp_path):
    with pytest.raises(UserError, match="config YAML not found"):
        resolve(["--configyml_path", str(tmp_path / "nope.yaml")], task)
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON"):
        resolve(["--datajson_path", str(tmp_path / "broken.json")], task)


@pytest.mark.slow  # default suite < 10 min: runs in make test-slow
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


def test_reference_page_documents_every_flag():
    from Engineering.config.docs import BEGIN, END, FLAGS_PAGE
    from Engineering.Engines.docs import tables

    text = (REPO / FLAGS_PAGE).read_text()
    block = text.split(BEGIN)[1].split(END)[0]
    assert block.strip() == tables().strip(), "run: python -m Engineering.Engines.docs --write"


def test_reference_page_documents_every_yaml_key():
    from Engineering.config.docs import KEYS_BEGIN, KEYS_END, KEYS_PAGE, key_tables
    from Engineering.Engines.docs import executor_tasks

    text = (REPO / KEYS_PAGE).read_text()
    block = text.split(KEYS_BEGIN)[1].split(KEYS_END)[0]
    assert block.strip() == key_tables(executor_tasks()).strip(), "run: python -m Engineering.Engines.docs --write"
    for key in (
        "model§DiffAE§T_eval",
        "model§DiffAE§net_ch",
        "training§LRDecay§type2§patience",
        "model§pythae§models",
        "eval§reference_Cs",
        "eval§val_ssim_every",
    ):
        assert f"`{key}`" in block


def test_typed_sections_one_default_and_unknown_keys_listed(tmp_path):
    from Engineering.Engines import registry

    diffae = registry.get("diffAE")
    cfg = resolve([], diffae).cfg
    # one home per default: the engine reads the key model's value (the YAML no longer repeats it)
    assert cfg.model.DiffAE.T_eval == 10 and cfg.model.DiffAE.T_inv is None and cfg.training.ema_decay == 0.9999
    with pytest.raises(
        UserError,
        match=r"unknown key model§DiffAE§net_chh \(did you mean model§DiffAE§net_ch\?\); "
        r"valid keys: .*attn_res.*net_ch",
    ):
        resolve(["--model§DiffAE§net_chh", "8"], diffae)
    bad = tmp_path / "bad.yaml"
    bad.write_text("eval:\n  val_ssim_evry: 2\n")
    with pytest.raises(UserError, match=r"unknown key eval§val_ssim_evry .*valid keys: .*val_ssim_every"):
        resolve(["--configyml_path", str(bad)], diffae)
    with pytest.raises(UserError, match=r"training§LRDecay§type2§decay_rate: input should be less than 1"):
        resolve(["--training§LRDecay§type2§decay_rate", "1.5"], diffae)
    # a key of another task is unknown here
    with pytest.raises(UserError, match="unknown key eval§reference_Cs"):
        resolve(["--eval§reference_Cs", "[1.0]"], diffae)


def test_pythae_config_file_ranks_as_an_explicit_flag(tmp_path):
    from Engineering.Engines import registry

    recon = registry.get("recon")
    yml = tmp_path / "r.yaml"
    yml.write_text("model:\n  drive: pythae\n  pythae:\n    models:\n      beta_vae: {beta: 2.0, warmup_epoch: 3}\n")
    js = tmp_path / "beta.json"
    js.write_text(json.dumps({"beta": 5.0}))
    base = ["--configyml_path", str(yml), "--pythae_model", "beta_vae"]
    assert resolve(base, recon).cfg.model.pythae.models["beta_vae"] == {"beta": 2.0, "warmup_epoch": 3}
    # the file given on the command line beats the YAML, field by field ...
    got = resolve(base + ["--pythae_config", str(js)], recon).cfg.model.pythae.models["beta_vae"]
    assert got == {"beta": 5.0, "warmup_epoch": 3}
    # ... and a path override beats the file
    got = resolve(
        base + ["--pythae_config", str(js), "--model§pythae§models§beta_vae§beta", "7.0"], recon
    ).cfg.model.pythae.models["beta_vae"]
    assert got["beta"] == 7.0
    with pytest.raises(UserError, match="--pythae_config file not found"):
        resolve(base + ["--pythae_config", str(tmp_path / "nope.json")], recon)
