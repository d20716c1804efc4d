"""The plug-in seam: one task registry, Executors/main.py --task, plug-ins from outside the repository."""

from __future__ import annotations

import shutil

import h5py
import pandas as pd
import pytest
import yaml

from Engineering.config.loader import resolve
from Engineering.Engines import registry
from Engineering.errors import UserError
from tests.conftest import REPO, run_executor


def test_builtin_tasks_are_registered_by_their_family_package():
    import pkgutil

    from Engineering.Engines import WarpDrives

    tasks = registry.tasks()
    families = {m.name for m in pkgutil.iter_modules(WarpDrives.__path__) if m.ispkg}
    # every family folder registers its task(s), and every built-in task comes from a family folder
    assert families == {t.module.rpartition(".")[2] for t in registry.builtin_tasks()}
    assert {"diffAE", "recon", "latentcls", "ssl", "erm"} <= set(tasks)
    for spec in registry.builtin_tasks():
        assert spec.module.startswith("Engineering.Engines.WarpDrives.") and spec.drive, spec.name
        assert spec.engine_class().__module__.startswith(spec.module + "."), spec.name  # the engine lives there
        assert registry.for_drive(spec.drive, "test") is spec
    assert registry.get("diffAE").published is not None and registry.get("recon").published is None
    with pytest.raises(UserError, match=r"unknown task 'difAE' \(did you mean 'diffAE'\?\); registered tasks: "):
        registry.get("difAE")
    with pytest.raises(UserError, match="names model§drive 'NoSuchDrive', which no registered task provides"):
        registry.for_drive("NoSuchDrive", "checkpoint x.ckpt")


def test_a_task_name_is_registered_once():
    spec = registry.get("recon")
    other = registry.TaskSpec(name="recon", description="x", drive="x", engine=object, module="elsewhere")
    with pytest.raises(UserError, match="registered twice"):
        registry.register(other)
    assert registry.get("recon") is spec


def _cli(capsys, argv, task=None):
    """An executor in-process (what ``python Executors/main*.py`` runs): exit code, stdout, stderr."""
    from Engineering.Engines import cli
    from Engineering.errors import run_cli

    code = run_cli(lambda a: cli.main(a, task=task), argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_generic_executor_errors_are_one_line_exit_2(capsys):
    every = ", ".join(sorted(registry.tasks()))
    code, _, err = _cli(capsys, ["--print_config"])
    assert code == 2 and err.strip() == f"error: --task NAME is required; registered tasks: {every}"
    code, _, err = _cli(capsys, ["--task", "nope"])
    assert code == 2 and "unknown task 'nope'" in err and every in err
    assert len(err.strip().splitlines()) == 1
    code, _, err = _cli(capsys, ["--plugins", "no_such_plugin_mod", "--task", "toy"])
    assert code == 2 and "--plugins no_such_plugin_mod: cannot import it" in err
    code, _, err = _cli(capsys, ["--task", "recon"], task="diffAE")  # main_diffAE.py --task recon
    assert code == 2 and "this executor runs task 'diffAE'" in err
    proc = run_executor("main.py", "--task", "nope")  # and once as a real process
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1


def test_main_alias_and_generic_executor_resolve_the_same_config(capsys):
    code_a, a, _ = _cli(capsys, ["--print_config", "--latent_dim", "12"], task="diffAE")
    code_b, b, _ = _cli(capsys, ["--task", "diffAE", "--print_config", "--latent_dim", "12"])
    assert code_a == code_b == 0 and a == b
    assert yaml.safe_load(a)["model"]["latent_dim"] == 12


@pytest.fixture
def plugin_copy(tmp_path):
    """The example plug-in, copied to a folder outside the repository."""
    folder = tmp_path / "elsewhere" / "plugin_drive"
    shutil.copytree(REPO / "examples" / "plugin_drive", folder)
    return folder


def test_toy_plugin_trains_tests_and_writes_outputs_from_outside_the_repository(plugin_copy, tiny_demo, tmp_path):
    args = [
        "--plugins",
        "toy_drive",
        "--task",
        "toy",
        "--json§datadir",
        str(tiny_demo),
        "--json§save_path",
        str(tmp_path / "runs"),
        "--num_epochs",
        "1",
        "--batch_size",
        "8",
        "--no-progress_bar",
        "--no-tbactive",
    ]
    env = {"PYTHONPATH": str(plugin_copy)}
    cfg = yaml.safe_load(run_executor("main.py", *args, "--print_config", cwd=tmp_path, env=env).stdout)
    assert cfg["model"]["toy"] == {"width": 8} and cfg["model"]["drive"] == "toy"
    proc = run_executor("main.py", *args, "--toy_width", "4", cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "runs" / "demo_demofold0_prec32_toy" / "Output"
    with h5py.File(out / "emb.h5") as h5:
        assert h5.attrs["latent_dim"] == 8 and h5.attrs["model"] == "toy" and h5.attrs["n_samples"] > 0
    table = pd.read_parquet(out / "emb.parquet")
    assert len(table) == h5py.File(out / "emb.h5").attrs["n_samples"] and list(table.columns[-8:]) == [
        f"Z{j}" for j in range(8)
    ]
    metrics = pd.read_csv(out / "metrics.csv")
    assert metrics["SSIM"].notna().all() and (out / "recon.h5").is_file()
    saved = yaml.safe_load((out.parent / "resolved_config.yaml").read_text())
    assert saved["model"]["toy"]["width"] == 4  # its own flag reached its typed section
    # the same plug-in through the environment variable; its typed section rejects an unknown key
    proc = run_executor(
        "main.py",
        "--task",
        "toy",
        "--model§toy§widht",
        "3",
        "--print_config",
        cwd=tmp_path,
        env={**env, registry.PLUGINS_ENV: "toy_drive"},
    )
    assert proc.returncode == 2 and "unknown key model§toy§widht (did you mean model§toy§width?)" in proc.stderr


def test_keys_and_flags_of_another_task_are_refused_naming_it(capsys):
    with pytest.raises(UserError, match=r"unknown key model§pythae: it belongs to task 'recon', not 'diffAE'"):
        resolve(["--model§pythae§nn", "conv"], registry.get("diffAE"))
    with pytest.raises(UserError, match=r"unknown key eval§reference_Cs: it belongs to task 'latentcls'"):
        resolve(["--eval§reference_Cs", "[1.0]"], registry.get("diffAE"))
    # a key no registered task has is new: created with a warning (the ancestor's rule), recorded
    r = resolve(["--model§toy§width", "3"], registry.get("diffAE"))
    assert (
        r.raw["model"]["toy"] == {"width": 3} and "'model§toy' does not exist and is created" in capsys.readouterr().err
    )
