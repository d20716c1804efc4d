"""The output contract is written by one callback, in bounded chunks: a cohort larger than the chunk is written
through the shards with at most a chunk of samples in memory, and gives the same files as one big chunk."""

from __future__ import annotations

import h5py
import numpy as np
import pandas as pd
import pytest

from Engineering.Engines import registry
from Engineering.Engines.MainEngine import run
from tests.conftest import tiny_args

TASK = registry.get("diffAE")


@pytest.fixture(scope="module")
def trained(tiny_demo, tmp_path_factory):
    save = tmp_path_factory.mktemp("writer")
    run(tiny_args(tiny_demo, save, "--fulltrainID", "w", "--run_mode", "1"), TASK)
    return tiny_demo, save


def _test(trained, suffix, chunk, *extra):
    demo, save = trained
    recon = [] if "--test_emb_only" in extra else ["--n_save_recon_subs", "3"]  # (refused with emb only)
    return run(
        tiny_args(
            demo,
            save,
            "--fulltrainID",
            "w",
            "--run_mode",
            "2",
            "--resume",
            "--output_suffix",
            suffix,
            "--eval§output_chunk",
            str(chunk),
            *recon,
            *extra,
        ),
        TASK,
    )


def _h5_arrays(path):
    out = {}
    with h5py.File(path) as h5:
        h5.visititems(lambda name, obj: out.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
        attrs = dict(h5.attrs)
    return out, attrs


def test_chunked_writes_hold_at_most_a_chunk_and_match_one_big_chunk(trained):
    big = _test(trained, "big", 100000)
    small = _test(trained, "small", 3)
    n = big["writer"].peak_buffered
    assert n > 3 * 3  # the cohort is several chunks long ...
    assert small["writer"].peak_buffered <= 3  # ... yet never more than a chunk was held in memory
    a, b = big["out_dir"], small["out_dir"]
    for name in ("emb.h5", "recon.h5"):
        (arrs_a, attrs_a), (arrs_b, attrs_b) = _h5_arrays(f"{a}/{name}"), _h5_arrays(f"{b}/{name}")
        assert sorted(arrs_a) == sorted(arrs_b) and len(arrs_a) > 0
        for key in arrs_a:
            np.testing.assert_array_equal(arrs_a[key], arrs_b[key], err_msg=f"{name}:{key}")
        assert attrs_a["n_samples"] == attrs_b["n_samples"] == n
    with h5py.File(f"{a}/recon.h5") as h5:
        assert len(h5) == 3  # the three selected subjects
        assert any(
            k.startswith("xT_")
            for p in h5
            for f in h5[p]
            for i in h5[p][f]
            for g in [h5[p][f][i]]
            for key in g
            for k in g[key]
        )
    ma, mb = pd.read_csv(f"{a}/metrics.csv"), pd.read_csv(f"{b}/metrics.csv")
    pd.testing.assert_frame_equal(ma, mb)
    assert len(ma) == n and ma[["SSIM", "PSNR", "NRMSE"]].notna().all().all()
    ta, tb = pd.read_parquet(f"{a}/emb.parquet"), pd.read_parquet(f"{b}/emb.parquet")
    pd.testing.assert_frame_equal(ta, tb)
    for out in (a, b):  # no shard left behind, nothing hidden in the Output folder
        from pathlib import Path

        assert sorted(p.name for p in Path(out).iterdir()) == [
            "emb.h5",
            "emb.parquet",
            "emb.tsv",
            "metrics.csv",
            "preview.png",
            "recon.h5",
        ]


def test_embeddings_only_writes_only_the_latents(trained):
    res = _test(trained, "emb", 2, "--test_emb_only")
    from pathlib import Path

    assert sorted(p.name for p in Path(res["out_dir"]).iterdir()) == ["emb.h5", "emb.parquet", "emb.tsv"]
    assert res["writer"].peak_buffered <= 2
