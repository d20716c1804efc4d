"""Every image task runs with no arguments on the bundled demo cohort (slow: minutes each; make test-slow)."""
from __future__ import annotations

import h5py
import pytest

from tests.conftest import run_executor

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("executor, tag", [("main_ssl.py", "SSL"), ("main_erm.py", "ERM"),
                                           ("main_recon.py", "recon"), ("main_diffAE.py", "DiffAE")])
def test_task_runs_with_no_arguments(tmp_path, executor, tag):
    proc = run_executor(executor, cwd=tmp_path, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / "Results" / f"demo_demofold0_prec32_{tag}" / "Output"
    with h5py.File(out / "emb.h5") as h5:
        assert h5.attrs["n_samples"] > 0


def test_ipirm_runs_with_only_its_method_flag(tmp_path):
    import pandas as pd

    proc = run_executor("main_ssl.py", "--method", "ipirm", cwd=tmp_path, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / "Results" / "demo_demofold0_prec32_SSL" / "Output"
    with h5py.File(out / "emb.h5") as h5:
        assert h5.attrs["n_samples"] > 0
    table = pd.read_csv(out / "partitions.tsv", sep="\t")
    assert len(table) > 0 and table["subset"].isin([0, 1]).all()
