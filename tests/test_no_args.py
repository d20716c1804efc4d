"""Every registered training task runs with no arguments on its bundled demo cohort (slow: minutes each; make
test-slow), through its executor (``Executors/main_<task>.py``, else ``main.py --task``). A task that reads another
run (``TaskSpec.upstream``) either runs without it or says in one line which flag it needs (the README and
docs/how-to/resume.md name them; tests/test_readme_commands.py checks the one line)."""

from __future__ import annotations

import h5py
import pytest

from Engineering.config.loader import resolve
from Engineering.Engines import registry
from Engineering.Engines.MainEngine import run_name
from tests.conftest import REPO, run_executor

pytestmark = pytest.mark.slow


def _executor(name: str) -> list[str]:
    script = f"main_{name}.py"
    return [script] if (REPO / "Executors" / script).is_file() else ["main.py", "--task", name]


@pytest.mark.parametrize("name", sorted(t.name for t in registry.builtin_tasks()))
def test_task_runs_with_no_arguments(tmp_path, name):
    spec = registry.get(name)
    proc = run_executor(*_executor(name), cwd=tmp_path, timeout=1800)
    if spec.upstream and proc.returncode == 2:  # it needs an earlier run: one line naming the flag
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert any(flag in proc.stderr for flag in spec.upstream), proc.stderr
        return
    assert proc.returncode == 0, proc.stderr[-3000:]
    folder = run_name(resolve([], spec).cfg, spec)  # composed: prefix, trainID, fold, precision, tag, parts
    out = tmp_path / "Results" / folder / "Output"
    assert f"outputs written to Results/{folder}/Output" in proc.stdout
    assert "data: " in proc.stdout  # the pipeline line
    if (out / "emb.h5").is_file():
        with h5py.File(out / "emb.h5") as h5:
            assert h5.attrs["n_samples"] > 0
    else:  # the GAN writes samples instead of latents
        assert (out / "samples.h5").is_file()


def test_ipirm_runs_with_only_its_method_flag(tmp_path):
    import pandas as pd

    proc = run_executor("main_ssl.py", "--method", "ipirm", cwd=tmp_path, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / "Results" / "demo_demofold0_prec32_SSL_method-ipirm" / "Output"
    with h5py.File(out / "emb.h5") as h5:
        assert h5.attrs["n_samples"] > 0
    table = pd.read_csv(out / "partitions.tsv", sep="\t")
    assert len(table) > 0 and table["subset"].isin([0, 1]).all()
