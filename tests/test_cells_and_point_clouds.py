"""The synthetic 3D cell cohort (@cells) and point-cloud sampling: intensity-weighted and masked sampling, the
cells' orientation and puncta rules as documented, and make_point_clouds.py over a contract file."""

from __future__ import annotations

import h5py
import numpy as np
import pandas as pd
import pytest
from scipy.spatial.transform import Rotation

from Engineering.data.cells import CELL_AXES, KEY, NUCLEUS_AXES, NUCLEUS_CENTRE, RULES, CellSpec, write_cells
from Engineering.data.pointclouds import sample_point_cloud
from tests.conftest import run_main


def test_sampling_follows_intensity_or_the_mask():
    vol = np.zeros((10, 10, 10))
    vol[2, 2, 2], vol[7, 7, 7] = 1.0, 3.0  # threshold 0.1 of max: both voxels drawn, 1:3 after the threshold
    cloud = sample_point_cloud(vol, 4000, np.random.default_rng(0))
    assert cloud.shape == (4000, 4) and cloud.dtype == np.float32
    near_bright = np.linalg.norm(cloud[:, :3] - (np.array([7, 7, 7]) - 4.5), axis=1) < 1
    np.testing.assert_allclose(near_bright.mean(), (3 - 0.3) / (3 - 0.3 + 1 - 0.3), atol=0.03)
    assert set(np.round(cloud[:, 3], 3)) == {1.0, 3.0}
    assert np.abs(cloud[:, :3] - np.round(cloud[:, :3])).max() <= 0.5  # jittered inside the voxel
    mask = np.zeros_like(vol)
    mask[:5] = 1
    masked = sample_point_cloud(vol, 2000, np.random.default_rng(1), mask=mask)
    assert (masked[:, 0] + 4.5 < 5).all() and abs(masked[:, 0].mean() + 4.5 - 2.0) < 0.2  # uniform in x < 5
    for bad, match in (
        (np.zeros((4, 4, 4)), "no voxel is above"),
        (np.zeros((4, 4)), "3D volumes"),
        (np.full((4, 4, 4), np.nan), "NaN"),
    ):
        with pytest.raises(ValueError, match=match):
            sample_point_cloud(bad, 10, np.random.default_rng(0))


@pytest.fixture(scope="module")
def cells(tmp_path_factory):
    return write_cells(tmp_path_factory.mktemp("cells") / "c", CellSpec(n_cells=16, n_puncta=12, n_points=200))


def test_cells_are_drawn_at_their_recorded_orientation(cells):
    """The body channel's longest principal axis is the rotation's first column (the cell's long axis)."""
    covs = pd.read_csv(cells / "covariates.tsv", sep="\t", dtype={"FID": str}).set_index("FID")
    with h5py.File(cells / "data.h5") as h5:
        for pid in h5:
            img = h5[f"{pid}/cell/1/{KEY}"][()]
            assert img.shape == (2, 1, 32, 32, 32)
            body = img[1, 0].astype(float)
            grid = np.stack(np.meshgrid(*[np.arange(32) - 15.5] * 3, indexing="ij"), -1).reshape(-1, 3)
            w = body.ravel() / body.sum()
            cov = (grid * w[:, None]).T @ grid
            axis = np.linalg.eigh(cov)[1][:, -1]
            rot = Rotation.from_quat(covs.loc[pid, ["qx", "qy", "qz", "qw"]].to_numpy(float)).as_matrix()
            assert abs(axis @ rot[:, 0]) > 0.98, pid


def test_puncta_follow_their_rule_and_point_clouds_match_the_images(cells):
    phen = pd.read_csv(cells / "phenotypes.tsv", sep="\t", dtype={"FID": str}).set_index("FID")["rule"]
    covs = pd.read_csv(cells / "covariates.tsv", sep="\t", dtype={"FID": str}).set_index("FID")
    assert list(phen.value_counts().sort_index()) == [4, 4, 4, 4] and set(phen) == set(RULES)
    rho = {r: [] for r in RULES}
    with h5py.File(cells / "points.h5") as pts, h5py.File(cells / "data.h5") as img:
        assert sorted(pts) == sorted(img)
        for pid in pts:
            cloud = pts[f"{pid}/cell/1/{KEY}"][()]
            assert cloud.shape == (200, 4)
            rot = Rotation.from_quat(covs.loc[pid, ["qx", "qy", "qz", "qw"]].to_numpy(float)).as_matrix()
            own = cloud[:, :3] @ rot  # back into the cell's frame
            rho[phen[pid]].append(
                (
                    np.median(np.sqrt(((own / CELL_AXES) ** 2).sum(1))),
                    np.median(np.sqrt((((own - NUCLEUS_CENTRE) / NUCLEUS_AXES) ** 2).sum(1))),
                )
            )
    med = {r: np.mean(v, axis=0) for r, v in rho.items()}
    assert med["membrane"][0] > med["random"][0] + 0.1  # nearer the membrane
    assert med["nucleus"][1] < med["random"][1] - 0.3  # nearer the nucleus
    folds = pd.read_csv(cells / "folds.csv")
    from ast import literal_eval

    tests = [set(literal_eval(t)) for t in folds["test"]]
    assert set().union(*tests) == set(phen.index) and sum(map(len, tests)) == 16  # disjoint, covering


def test_make_point_clouds_samples_a_contract_file(cells, tmp_path, capsys):
    out = tmp_path / "pc.h5"
    assert run_main("make_point_clouds", cells / "data.h5", "--out", out, "--n_points", "64", "--channel", "1") == 0
    with h5py.File(out) as h5, h5py.File(cells / "data.h5") as src:
        assert sorted(h5) == sorted(src)
        pid = next(iter(h5))
        cloud = h5[f"{pid}/cell/1/{KEY}"][()]
        assert cloud.shape == (64, 4) and h5[f"{pid}/cell/1/{KEY}"].attrs["channel"] == 1
    flat = tmp_path / "flat.h5"
    with h5py.File(flat, "w") as h5:
        h5.create_dataset(f"p/f/1/{KEY}", data=np.ones((1, 1, 1, 8, 8)))
    assert run_main("make_point_clouds", flat, "--out", tmp_path / "none.h5") == 2
    assert "not a 5D dataset with a volume" in capsys.readouterr().err
    assert not (tmp_path / "none.h5").exists()


def test_the_cells_demo_name_resolves(_isolated_cache):
    from types import SimpleNamespace

    from Engineering.data.datamodule import data_dir

    d = data_dir(SimpleNamespace(datadir="@cells"))
    assert d.name == "cells_v2" and (d / "points.h5").is_file()
    with h5py.File(d / "data.h5") as h5:
        assert len(h5) == CellSpec().n_cells
