"""The ancestor's documented commands (seed 004, ImLatent's README) run as written, data paths aside; its YAML
configs load (each key mapped to ours, refused, or named in one warning as having no effect); its flags act or
are refused with one line (the documented no-ops warn)."""

from __future__ import annotations

import shlex

import pytest
import yaml

from Engineering.Engines import cli
from Engineering.errors import run_cli
from tests.conftest import REPO

# ImLatent README, "Executing the pipeline" and "Running inference on a trained model" (seed 004), verbatim
FIRST = (
    "python Executors/main_recon.py --batch_size 32 --lr 0.0001 --training§LRDecay§type1§decay_rate 0.15 "
    "--training§prova testing --json§save_path /myres/toysets/Results"
)
POETRY = "poetry run " + FIRST
HELP = "python Executors/main_diffAE.py --help"
INFERENCE = (
    "--resume --load_best --run_mode 2",
    "--resume --load_best --run_mode 2 --output_suffix XYZ",
    "--resume --load_best --run_mode 2 --output_suffix fullDS --json§foldCSV 0",
)
# "python Executors/main_diffAE.py --load_hf GlastonburyGroup/UKBBLatent_Cardiac_20208_DiffAE3D_L128_S1701" needs
# the Hub: tests/test_ancestor_parity.py runs it from an offline copy of the published layout.
FIXTURE = REPO / "tests" / "fixtures" / "ancestor_config.yaml"


def _main(capsys, argv: list[str]):
    """An executor in-process, as ``python Executors/main_<task>.py`` runs it: (exit code, stdout, stderr)."""
    script = argv[0].split("/")[-1]
    task = script[len("main_") : -len(".py")]
    code = run_cli(lambda a: cli.main(a, task=task), argv[1:])
    out = capsys.readouterr()
    return code, out.out, out.err


def _command(text: str, save) -> list[str]:
    """The documented command's arguments after ``python`` with its result folder replaced by ``save``."""
    argv = shlex.split(text)
    argv = argv[argv.index("python") + 1 :]
    return [str(save) if a == "/myres/toysets/Results" else a for a in argv]


@pytest.fixture(scope="module")
def trained(tiny_demo, tmp_path_factory):
    """The README's first command, run as written on the demo cohort (its result folder in a temporary place)."""
    save = tmp_path_factory.mktemp("ancestor") / "Results"
    argv = [*_command(FIRST, save), "--json§datadir", str(tiny_demo), "--no-progress_bar"]
    code = run_cli(lambda a: cli.main(a, task="recon"), argv[1:])
    assert code == 0
    return save, argv


def test_the_first_readme_command_trains_and_records_the_new_key(trained, capsys):
    save, argv = trained
    run_dir = next(save.iterdir())
    cfg = yaml.safe_load((run_dir / "resolved_config.yaml").read_text())
    # the new key is created (the ancestor's documented rule) and recorded; the flags are what the command says
    assert cfg["training"]["prova"] == "testing"
    assert cfg["training"]["batch_size"] == 32 and cfg["training"]["lr"] == 0.0001
    assert cfg["training"]["LRDecay"]["type1"]["decay_rate"] == 0.15
    assert (run_dir / "Output" / "emb.h5").is_file()
    # and it says so: the new key is created with a warning; the StepLR setting without StepLR has no effect
    code, out, err = _main(capsys, [*argv, "--print_config"])
    assert code == 0 and yaml.safe_load(out)["training"]["prova"] == "testing"
    assert "'training§prova' does not exist and is created" in err
    assert "--training§LRDecay§type1§decay_rate has no effect: --lr_decay_type is 0" in err
    assert _command(POETRY, save) == _command(FIRST, save)  # the Poetry form runs the same command


@pytest.mark.parametrize("extra", INFERENCE)
def test_the_readme_inference_commands_test_the_trained_run(trained, extra, capsys):
    save, argv = trained
    code, out, err = _main(capsys, [*argv, *shlex.split(extra)])
    assert code == 0, err
    run_dir = next(save.iterdir())
    suffix = extra.split("--output_suffix ")[1].split()[0] if "--output_suffix" in extra else ""
    out_dir = run_dir / ("Output" + (f"_{suffix}" if suffix else ""))
    import h5py

    with h5py.File(out_dir / "emb.h5") as h5:  # --load_best: the best checkpoint is what was tested
        assert "best-" in str(h5.attrs["checkpoint"]) and h5.attrs["n_samples"] > 0


def test_the_readme_help_command_lists_the_flags(capsys):
    with pytest.raises(SystemExit) as exc:
        _main(capsys, _command(HELP, "unused"))
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "--batch_size" in out and "--load_hf" in out


def test_the_ancestors_yaml_loads_each_key_mapped_or_named_once(capsys):
    code, out, err = _main(capsys, ["Executors/main_recon.py", "--configyml_path", str(FIXTURE), "--print_config"])
    assert code == 0, err
    cfg = yaml.safe_load(out)
    assert cfg["training"]["seed"] == 1701 and cfg["model"]["latent_dim"] == 128
    assert cfg["training"]["LRDecay"]["type1"] == {"decay_every": 25, "decay_rate": 0.1}  # decay_nepoch
    assert cfg["data"]["complex_mode"] == "magnitude" and cfg["data"]["data_mask_mode"] == 0  # 1 as an integer
    assert cfg["json"]["DS_every_primary"] is False and cfg["json"]["DS_include_repeatAcq"] is True
    p = cfg["model"]["pythae"]
    assert p["n_features"] == 16 and p["nn"] == "conv" and p["reconstruction_loss"] == "l1"
    # the ancestor's own models' sections reach them unchanged (custom_models/)
    assert p["models"] == {"beta_vae": {"beta": 2.0}, "ultra_vae": {"p_do": 0.0, "learn_phenotypes": True}}
    lines = [line for line in err.splitlines() if "no effect here" in line]
    assert len(lines) == 1, err  # one warning names every key that changes nothing here
    for key in (
        "training§log_freq",
        "training§im_log_freq",
        "training§save_recon",
        "training§augmentations",
        "eval§norm4diff",
        "eval§metrics2use",
        "data§dataset§combine_acquisitions",
        "model§pythae§wrappers",
        "model§pythae§custom_loss_class",
        "model§DiffAE",
    ):
        assert key in lines[0], key
    assert "model§pythae§models" not in lines[0]
    # the same file for main_diffAE: its DiffAE keys act, main_recon's section is named
    code, out, err = _main(capsys, ["Executors/main_diffAE.py", "--configyml_path", str(FIXTURE), "--print_config"])
    assert code == 0, err
    assert yaml.safe_load(out)["model"]["DiffAE"]["net_ch"] == 32
    assert "model§pythae" in err and "model§DiffAE§sample_every_batches" in err


@pytest.mark.parametrize(
    "edit, match",
    [
        ("data:\n  complex_mode: 7\n", "data§complex_mode 7 is not one of the ancestor's modes"),
        ("training:\n  augmentations:\n    p: 0.5\n", "augmentations p=0.5"),
        (
            "model:\n  pythae:\n    reconstruction_loss: custom\n"
            "    custom_loss_class: Engineering.Science.losses.channel_weighted.ChannelVarWeightedLoss\n",
            "custom_loss_class .*ChannelVarWeightedLoss: the ancestor's loss is not implemented",
        ),
    ],
)
def test_what_the_ancestors_yaml_asks_and_we_lack_is_refused(edit, match, tmp_path, capsys):
    bad = tmp_path / "c.yaml"
    bad.write_text(edit)
    code, _, err = _main(capsys, ["Executors/main_recon.py", "--configyml_path", str(bad), "--print_config"])
    assert code == 2 and len(err.strip().splitlines()) == 1
    import re

    assert re.search(match, err), err


@pytest.mark.parametrize(
    "flag, value, task, outcome",
    [
        ("lossID", "0", "diffAE", "--lossID 0 has no effect"),
        ("lossID", "-2", "recon", "--lossID -2 (LPIPS) is refused"),
        ("lossID", "-1", "diffAE", "--lossID -1 (the in-house perceptual loss) is not honoured"),
        ("lossID", "9", "recon", "--lossID 9: not one of the ancestor's loss IDs"),
        ("taskID", "0", "recon", "--taskID 0 has no effect"),
        ("taskID", "1", "recon", "--taskID 1 selects the ancestor's task 'diffAE'"),
        ("modelID", "0", "recon", "--modelID 0 has no effect"),
        ("modelID", "0", "diffAE", "--modelID 0 is not honoured by task 'diffAE'"),
        ("pythae_wrapper_mode", "0", "recon", "--pythae_wrapper_mode 0 has no effect"),
        ("pythae_wrapper_mode", "1", "recon", "LSTM wrapper is not implemented"),
        ("n_optimisers", "-1", "recon", "--n_optimisers -1 has no effect"),
        ("n_optimisers", "2", "recon", "--n_optimisers 2 is not honoured"),
        ("in_channels", "3", "recon", "--in_channels is not honoured by task 'recon': the channel count comes from"),
        ("p_augment", "0.5", "diffAE", "--p_augment is not honoured by task 'diffAE'"),
    ],
)
def test_the_ancestors_flags_act_or_are_refused(flag, value, task, outcome, capsys):
    code, _, err = _main(capsys, [f"Executors/main_{task}.py", f"--{flag}", value, "--print_config"])
    if "no effect" in outcome:
        assert code == 0 and outcome in err and f"warning: {outcome}" in err
    else:
        assert code == 2 and outcome in err and len(err.strip().splitlines()) == 1, err


def test_the_ancestors_json_tables_act_only_with_a_model_that_reads_them(tmp_path, capsys):
    code, _, err = _main(capsys, ["Executors/main_recon.py", "--json§DS_confounders§path", "c.tsv", "--print_config"])
    assert (
        code == 2
        and "--json§DS_confounders§path is not honoured by task 'recon': it is read only by a model "
        "that uses confounders"
        in err
    )
    code, _, err = _main(capsys, ["Executors/main_recon.py", "--json§DS_phenotypes§path", "p.tsv", "--print_config"])
    assert (
        code == 2
        and "--json§DS_phenotypes§path is not honoured by task 'recon': it is read only by a model "
        "that learns phenotypes"
        in err
    )
    code, out, err = _main(
        capsys,
        [
            "Executors/main_recon.py",
            "--pythae_model",
            "custom_ultra_vae",
            "--model§pythae§models§ultra_vae§anti_confounders_strategy",
            "2",
            "--json§DS_confounders§path",
            "c.tsv",
            "--print_config",
        ],
    )
    assert code == 0, err
    # in a dataNpath JSON file (the ancestor's carry them) the tables are read by the models that use them
    js = tmp_path / "d.json"
    js.write_text('{"datadir": "@demo", "DS_confounders": {"path": "c.tsv", "cols": "Age"}}')
    code, _, err = _main(capsys, ["Executors/main_recon.py", "--datajson_path", str(js), "--print_config"])
    assert code == 0 and "DS_confounders" not in err
