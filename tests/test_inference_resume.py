"""Cohort-scale inference: a killed test resumes from its written chunks and writes each subject once, with the
latents of an uninterrupted test; a sharded test (--shard i/n) merges into the unsharded outputs."""

from __future__ import annotations

import h5py
import numpy as np
import pandas as pd
import pytest

from Engineering.Engines import registry
from Engineering.Engines.MainEngine import run
from Engineering.errors import UserError
from tests.conftest import REPO, run_executor, tiny_args

KEYS = ["patientID", "fieldID", "instanceID", "key", "c", "t", "s"]


def _table(out):
    t = pd.read_csv(out / "emb.tsv", sep="\t", dtype={"patientID": str, "fieldID": str, "instanceID": str})
    assert len(t) > 0 and not t.duplicated(KEYS).any()
    with h5py.File(out / "emb.h5") as h5:
        assert h5.attrs["n_samples"] == len(t)
    return t.sort_values(KEYS).reset_index(drop=True)


@pytest.fixture(scope="module")
def trained(tiny_demo, tmp_path_factory):
    save = tmp_path_factory.mktemp("inference")
    run(tiny_args(tiny_demo, save, "--fulltrainID", "m", "--run_mode", "1"), registry.get("diffAE"))
    return save


def test_killed_inference_resumes_and_writes_each_subject_once(tiny_demo, trained):
    args = [
        *tiny_args(
            tiny_demo,
            trained,
            "--fulltrainID",
            "m",
            "--resume",
            "--run_mode",
            "2",
            "--json§foldCSV",
            "0",
            "--batch_size",
            "2",
            "--eval§output_chunk",
            "2",
            "--n_save_recon_subs",
            "2",
        )
    ]
    run(args + ["--output_suffix", "clean"], registry.get("diffAE"))
    env = {"PYTHONPATH": f"{REPO}:{REPO / 'tests' / 'plugins'}"}
    probe = ["--plugins", "kill_probe", "--task", "diffae_kill", *args, "--output_suffix", "cohort"]
    proc = run_executor("main.py", *probe, env={**env, "KILL_AFTER": "4"})
    assert proc.returncode == -9  # killed: no handler ran
    part = trained / "m" / ".Output_cohort.partial"
    chunks = sorted(part.glob("chunk_*.h5"))
    assert len(chunks) == 4 and not (trained / "m" / "Output_cohort").exists()  # 4 batches of 2 written, no output
    proc = run_executor("main.py", *probe, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resuming an interrupted test: 8 of" in proc.stdout
    clean, resumed = _table(trained / "m" / "Output_clean"), _table(trained / "m" / "Output_cohort")
    assert resumed[KEYS].equals(clean[KEYS])
    z = [c for c in clean.columns if c.startswith("Z")]
    np.testing.assert_allclose(resumed[z].to_numpy(), clean[z].to_numpy(), rtol=0, atol=1e-6)
    assert not part.exists()  # merged and cleaned up
    metrics = pd.read_csv(trained / "m" / "Output_cohort" / "metrics.csv", dtype={"patientID": str})
    assert len(metrics) == len(pd.read_csv(trained / "m" / "Output_clean" / "metrics.csv"))
    with (
        h5py.File(trained / "m" / "Output_cohort" / "recon.h5") as a,
        h5py.File(trained / "m" / "Output_clean" / "recon.h5") as b,
    ):
        assert sorted(a) == sorted(b)  # the selected subjects' reconstructions, across the interruption


def test_sharded_inference_merges_into_the_unsharded_outputs(tiny_demo, trained):
    base = tiny_args(
        tiny_demo,
        trained,
        "--fulltrainID",
        "m",
        "--resume",
        "--run_mode",
        "2",
        "--json§foldCSV",
        "0",
        "--test_emb_only",
    )
    task = registry.get("diffAE")
    run(base + ["--output_suffix", "whole"], task)
    for i in range(3):
        run(base + ["--output_suffix", "sh", "--shard", f"{i}/3"], task)
    parts = [_table(trained / "m" / f"Output_sh_shard{i}of3") for i in range(3)]
    assert not set(parts[0].patientID) & set(parts[1].patientID)  # disjoint by patient
    proc = run_executor("merge_shards.py", str(trained / "m"), "--output_suffix", "sh")
    assert proc.returncode == 0, proc.stderr[-3000:]
    merged, whole = _table(trained / "m" / "Output_sh"), _table(trained / "m" / "Output_whole")
    assert merged[KEYS].equals(whole[KEYS])
    z = [c for c in whole.columns if c.startswith("Z")]
    np.testing.assert_allclose(merged[z].to_numpy(), whole[z].to_numpy(), rtol=0, atol=1e-6)
    with (
        h5py.File(trained / "m" / "Output_sh" / "emb.h5") as a,
        h5py.File(trained / "m" / "Output_whole" / "emb.h5") as b,
    ):
        assert sorted(a) == sorted(b) and a.attrs["shards"] == 3
    # errors: one line each
    with pytest.raises(UserError, match="--shard '3/3': give i/n"):
        run(base + ["--shard", "3/3"], task)
    with pytest.raises(UserError, match="use it with --run_mode 2"):
        run(tiny_args(tiny_demo, trained, "--fulltrainID", "x", "--shard", "0/2"), task)
    import shutil

    shutil.rmtree(trained / "m" / "Output_sh_shard1of3")
    proc = run_executor("merge_shards.py", str(trained / "m"), "--output_suffix", "sh")
    assert proc.returncode == 2 and "shards [1] of 3 are missing" in proc.stderr
