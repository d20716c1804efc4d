"""Every training executor that needs no earlier run runs with no arguments on its bundled demo cohort (slow:
minutes each; make test-slow). The README and docs/how-to/resume.md name the ones that need an earlier run's
output (main_latentcls, main_restyle) and tests/test_readme_commands.py checks that each says which flag in one
line."""
from __future__ import annotations

import h5py
import pytest

from tests.conftest import run_executor

pytestmark = pytest.mark.slow

# executor -> its run folder under Results/ (the composed run name: prefix, trainID, fold, precision, tag, parts)
NO_ARGS = {"main_ssl.py": "demo_demofold0_prec32_SSL_method-simclr",
           "main_erm.py": "demo_demofold0_prec32_ERM",
           "main_recon.py": "demo_demofold0_prec32_recon_pythaemodel-vae",
           "main_diffAE.py": "demo_demofold0_prec32_DiffAE",
           "main_rotinv.py": "cells_demofold0_prec32_RotInv",
           "main_pointcloud.py": "cells_points_demofold0_prec32_PointCloud_encoder-vn",
           "main_iid.py": "demo_mc_demofold0_prec32_IID",
           "main_stylegan.py": "demo_mc_demofold0_prec32_StyleGAN2"}


@pytest.mark.parametrize("executor", sorted(NO_ARGS))
def test_task_runs_with_no_arguments(tmp_path, executor):
    proc = run_executor(executor, cwd=tmp_path, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / "Results" / NO_ARGS[executor] / "Output"
    assert f"outputs written to Results/{NO_ARGS[executor]}/Output" in proc.stdout
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
