"""Every registered task x every spatial dim it declares: its one-batch dev run (``TaskSpec.dims``, ``dev_args``,
``upstream``) trains, validates, tests and writes what a user looks at. A new family is tested by registering it.

Each case runs the task as its executor does, in-process (a subprocess would add ~5 s of imports per case), on a
tiny bundled-style cohort: the 2D demo (or its 3-channel variant, for tasks whose bundled data it is), a 16^3 cell
cohort for 3D images and the cells' point clouds. A task that reads another's run (``upstream``) gets the dev run
of that task, made once per session. A plug-in from outside the repository is tested the same way:
``IMLATENT_PLUGINS=toy_drive PYTHONPATH=examples/plugin_drive pytest tests/test_every_task.py``.
"""

from __future__ import annotations

import contextlib
import io
import sys
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import yaml

from Engineering.config import honour
from Engineering.Engines import registry

pytestmark = pytest.mark.usefixtures("one_thread")

# each bundled cohort's tiny stand-in (a conftest fixture; 3D images are the cells' 16^3 volumes)
DATA = {
    "dataNpath_demo.json": "tiny_demo",
    "dataNpath_demo_mc.json": "tiny_demo_mc",
    "dataNpath_cells.json": "tiny_cells",
    "dataNpath_cells_points.json": "tiny_cells",
}
SHAPE = {2: ("--input_shape", "32,32"), 3: ("--input_shape", "16,16,16")}
ONE_BATCH = {"num_epochs": "1", "n_train_batches": "1", "n_val_batches": "1"}  # per phase, where it honours them
RECON = honour.RECON_OUTPUTS - honour.IMAGE_GRIDS  # a task that honours these writes recon.h5


def _cases():
    registry.load_plugins()  # and the plug-ins of $IMLATENT_PLUGINS: an outside family is tested by naming it there
    for name, spec in sorted(registry.tasks().items(), key=lambda kv: kv[0].lower()):
        for dim in spec.dims:
            yield pytest.param(name, dim, id=f"{name}-{dim}d")


def _dim_args(spec, dim: int) -> tuple[list[str], str]:
    """The flags that put a task on ``dim``-D data (images only: a points task's dims are its points'), and the
    fixture of that data."""
    datajson = Path(spec.datajson).name
    if spec.honours is None or "is3D" not in spec.honours:  # its data's kind is fixed (points, latents, 2D GAN)
        return [], DATA.get(datajson, "tiny_demo")
    if dim == 3:
        return ["--is3D", *SHAPE[3], "--datajson_path", str(registry.CONFIGS / "dataNpath_cells.json")], "tiny_cells"
    if spec.defaults.get("is3D"):  # a 3D-first task in 2D: on the demo frames
        return ["--no-is3D", *SHAPE[2], "--datajson_path", str(registry.CONFIGS / "dataNpath_demo.json")], "tiny_demo"
    return [*SHAPE[2]], DATA.get(datajson, "tiny_demo")


@pytest.fixture(scope="session")
def dev_run(request, tmp_path_factory):
    """(task, dim) -> (exit code, run folder, stdout), each made once per session (upstream runs first)."""
    from Engineering.Engines import cli
    from Engineering.errors import run_cli

    made: dict[tuple[str, int], tuple[int, Path, str]] = {}
    root = tmp_path_factory.mktemp("every_task")

    def make(name: str, dim: int):
        if (name, dim) in made:
            return made[name, dim]
        spec = registry.get(name)
        args, data = _dim_args(spec, dim)
        for flag, parent in spec.upstream.items():
            up_dim = dim if dim in registry.get(parent).dims else 2
            code, folder, _ = make(parent, up_dim)
            assert code == 0, f"upstream {parent}-{up_dim}d failed"
            args += [flag, str(folder)]
        save, run_id = root / f"{name}-{dim}d", "dev"
        one = [a for k, v in ONE_BATCH.items() if spec.honours is None or k in spec.honours for a in (f"--{k}", v)]
        argv = [
            *spec.dev_args,
            *one,
            *args,
            "--json§datadir",
            str(request.getfixturevalue(data)),
            "--json§save_path",
            str(save),
            "--fulltrainID",
            run_id,
            "--no-progress_bar",
            "--no-tbactive",
        ]
        printed = io.StringIO()
        with contextlib.redirect_stdout(_Both(sys.stdout, printed)):  # still shown by pytest on a failure
            code = run_cli(lambda a: cli.main(a, task=name), argv)
        made[name, dim] = code, save / run_id, printed.getvalue()
        return made[name, dim]

    return make


class _Both:
    """Writes to several streams (a run's output to pytest's capture and to the case's record)."""

    def __init__(self, *streams):
        self.streams = streams

    def write(self, s):
        for st in self.streams:
            st.write(s)
        return len(s)

    def flush(self):
        for st in self.streams:
            st.flush()


def _finite_log(folder: Path) -> None:
    """Every loss/metric term the run logged (its csv_logs/metrics.csv) is finite where it is logged; a loss is
    logged and the validation ran."""
    log = pd.read_csv(folder / "csv_logs" / "metrics.csv")
    terms = [c for c in log.columns if c not in ("epoch", "step") and pd.api.types.is_numeric_dtype(log[c])]
    assert any("loss" in t for t in terms) and any(t.startswith("val_") for t in terms), list(log.columns)
    for term in terms:
        values = log[term].dropna().to_numpy(dtype=float)
        assert len(values) and np.isfinite(values).all(), (term, values)


@pytest.mark.parametrize(("name", "dim"), list(_cases()))
def test_dev_run_trains_tests_and_writes_its_outputs(name, dim, dev_run):
    spec = registry.get(name)
    code, folder, printed = dev_run(name, dim)
    assert code == 0, printed[-3000:]
    _finite_log(folder)
    out = folder / "Output"
    if (out / "emb.h5").is_file():  # the output contract: latents
        with h5py.File(out / "emb.h5") as h5:
            assert h5.attrs["n_samples"] > 0 and h5.attrs["model"] == spec.drive
    elif (out / "samples.h5").is_file():  # the GAN writes samples instead
        with h5py.File(out / "samples.h5") as h5:
            assert len(h5.keys()) > 0
    else:  # a predictor of latents: its scores
        assert len(pd.read_csv(out / "metrics.csv")) > 0
    if RECON <= (spec.honours or frozenset()) and "test_emb_only" not in spec.fixed:  # it reconstructs
        with h5py.File(out / "recon.h5") as h5:
            assert len(h5.keys()) > 0
    for table in out.glob("*.csv"):
        assert table.stat().st_size > 0, table
    saved = yaml.safe_load((folder / "resolved_config.yaml").read_text())
    assert saved["model"]["drive"] == spec.drive


def test_every_task_declares_a_dev_run():
    """Each task's dev run is declared where it is registered: dims of 2 and/or 3, and upstream tasks that exist."""
    for name, spec in registry.tasks().items():
        assert spec.dims and set(spec.dims) <= {2, 3}, name
        for flag, parent in spec.upstream.items():
            assert flag.startswith("--") and parent in registry.tasks() and parent != name, (name, flag, parent)
