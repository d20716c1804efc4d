"""Runs never overwrite each other (issue 33, item 3): the run name carries the model variant (each task's
registered run_name_parts) and the weights' source, and a run folder or Output of another configuration is
refused with one line, while the ancestor's --resume --load_best --run_mode 2 flow on the same run still works."""

from __future__ import annotations

import pytest
import yaml

from Engineering.config.loader import dump_yaml, resolve
from Engineering.Engines import registry, run_folder
from Engineering.Engines.MainEngine import run, run_name
from Engineering.errors import UserError
from tests.conftest import tiny_args


def _name(task: str, *args: str) -> str:
    spec = registry.get(task)
    return run_name(resolve(list(args), spec).cfg, spec)


@pytest.mark.parametrize(
    "task,a,b",
    [
        ("recon", ["--pythae_model", "ae"], ["--pythae_model", "beta_vae"]),
        ("ssl", [], ["--method", "ipirm"]),
        ("pointcloud", ["--model§PointCloud§encoder", "vn"], ["--model§PointCloud§encoder", "dgcnn"]),
        ("diffAE", [], ["--is3D", "--input_shape", "4,32,32"]),
        ("rotinv", [], ["--no-is3D", "--input_shape", "32,32"]),
        # an inference with published weights is not the demo's training run
        (
            "diffAE",
            [],
            ["--load_hf", "GlastonburyGroup/UKBBLatent_Cardiac_20208_DiffAE3D_L128_S1701", "--run_mode", "2"],
        ),
        ("diffAE", [], ["--preweights_path", "Results/pre/Checkpoints/last.ckpt"]),
        ("diffAE", [], ["--load_model_4test", "Results/other_run", "--run_mode", "2"]),
    ],
)
def test_model_variants_and_weight_sources_get_their_own_run_folder(task, a, b):
    assert _name(task, *a) != _name(task, *b)


def test_names_keep_the_ancestors_shape():
    assert _name("recon", "--pythae_model", "beta_vae") == "demo_demofold0_prec32_recon_pythaemodel-beta_vae"
    assert _name("diffAE") == "demo_demofold0_prec32_DiffAE"  # the demo's name (README) is unchanged
    # the ancestor's inference flow adds flags to the training command: the same run folder
    assert _name(
        "diffAE", "--resume", "--load_best", "--run_mode", "2", "--output_suffix", "fullDS", "--json§foldCSV", "0"
    ) == _name("diffAE")
    hf = ["--load_hf", "some/repo"]
    assert _name("diffAE", *hf, "--resume", "--load_best", "--run_mode", "2") == _name("diffAE", *hf)
    # testing this very run's checkpoints by path keeps its name
    assert _name(
        "diffAE", "--load_model_4test", "Results/demo_demofold0_prec32_DiffAE/Checkpoints/best.ckpt", "--run_mode", "2"
    ) == _name("diffAE")
    assert _name("diffAE", "--fulltrainID", "mine", "--load_hf", "x/y") == "mine"  # an exact name stays exact


def test_every_registered_task_composes_a_name():
    for spec in registry.tasks().values():
        name = run_name(resolve([], spec).cfg, spec)
        assert name and "/" not in name and " " not in name, (spec.name, name)


def _raw(task: str, *args: str) -> dict:
    return resolve(list(args), registry.get(task)).raw


def test_guard_refuses_another_configuration(tmp_path, capsys):
    run_dir, out = tmp_path / "r", tmp_path / "r" / "Output"
    out.mkdir(parents=True)
    (out / "emb.h5").write_text("x")
    (run_dir / "resolved_config.yaml").write_text(dump_yaml(_raw("recon", "--pythae_model", "ae")))
    other = _raw("recon", "--pythae_model", "beta_vae")
    with pytest.raises(
        UserError,
        match=r"another configuration \(model§pythae§model 'ae' there, 'beta_vae' here\).*"
        r"--trainID NAME or --fulltrainID NAME",
    ):
        run_folder.check(other, run_dir, out, 4, True)
    with pytest.raises(UserError, match="--output_suffix NAME"):  # a test of another model: not into its Output
        run_folder.check(other, run_dir, out, 2, True)
    # with a suffix it tests beside them and records its own config there
    assert (
        run_folder.check(
            _raw("recon", "--pythae_model", "beta_vae", "--output_suffix", "b"), run_dir, run_dir / "Output_b", 2, True
        )
        is False
    )
    # the same configuration: allowed, and a replaced Output is said
    assert run_folder.check(_raw("recon", "--pythae_model", "ae"), run_dir, out, 2, True) is True
    assert "this test's outputs replace it" in capsys.readouterr().out
    # training the same configuration again from scratch is said; resuming it is not
    (run_dir / "Checkpoints").mkdir()
    (run_dir / "Checkpoints" / "last.ckpt").write_text("x")
    run_folder.check(_raw("recon", "--pythae_model", "ae"), run_dir, out, 1, False)
    assert "trains from scratch" in capsys.readouterr().out
    run_folder.check(_raw("recon", "--pythae_model", "ae"), run_dir, out, 1, False, resuming=True)
    assert capsys.readouterr().out == ""
    # an Output that records another configuration is never replaced
    (run_dir / "Output_b").mkdir()
    (run_dir / "Output_b" / "emb.h5").write_text("x")
    (run_dir / "resolved_config_Output_b.yaml").write_text(dump_yaml(_raw("recon", "--pythae_model", "rae_l2")))
    with pytest.raises(UserError, match="Output_b holds the outputs of another configuration"):
        run_folder.check(
            _raw("recon", "--pythae_model", "beta_vae", "--output_suffix", "b"), run_dir, run_dir / "Output_b", 2, True
        )


def test_same_run_flow_and_refusals_end_to_end(tiny_demo, tmp_path, one_thread, capsys):
    """Train, test the same run with --resume --load_best --run_mode 2 (the ancestor's flow), then another model
    under the same --fulltrainID is refused before anything is written; with --output_suffix its test goes beside."""
    task = registry.get("diffAE")
    base = tiny_args(tiny_demo, tmp_path, "--fulltrainID", "r", "--test_emb_only")
    run_dir = tmp_path / "r"
    run(base, task)
    trained = (run_dir / "resolved_config.yaml").read_text()
    train_log = (run_dir / "csv_logs" / "metrics.csv").read_text()
    emb = run_dir / "Output" / "emb.h5"
    stamp = emb.stat().st_mtime_ns
    capsys.readouterr()

    res = run([*base, "--resume", "--load_best", "--run_mode", "2"], task)
    assert res["out_dir"] == str(run_dir / "Output") and emb.stat().st_mtime_ns != stamp
    assert "this test's outputs replace it" in capsys.readouterr().out
    assert (run_dir / "resolved_config.yaml").read_text() == trained  # the training record is kept
    assert (run_dir / "csv_logs" / "metrics.csv").read_text() == train_log  # and the training's log
    stamp = emb.stat().st_mtime_ns

    other = [*base, "--latent_dim", "4"]
    with pytest.raises(
        UserError,
        match=r"run folder .*/r holds a run of another configuration \(model§latent_dim 8 "
        r"there, 4 here\).*--trainID NAME or --fulltrainID NAME",
    ):
        run(other, task)
    with pytest.raises(UserError, match="--output_suffix NAME"):
        run([*other, "--load_model_4test", str(run_dir / "Checkpoints"), "--run_mode", "2"], task)
    assert emb.stat().st_mtime_ns == stamp and (run_dir / "resolved_config.yaml").read_text() == trained

    # a test of another configuration (here: other sampling steps) with its own suffix goes beside, its config too
    res = run([*base, "--resume", "--run_mode", "2", "--model§DiffAE§T_eval", "2", "--output_suffix", "t2"], task)
    assert res["out_dir"] == str(run_dir / "Output_t2")
    recorded = yaml.safe_load((run_dir / "resolved_config_Output_t2.yaml").read_text())
    assert recorded["model"]["DiffAE"]["T_eval"] == 2
    assert (run_dir / "resolved_config.yaml").read_text() == trained and emb.stat().st_mtime_ns == stamp
