"""Self-supervised task: NT-Xent against SimCLR's formula, MinCLR's distinct positives, augmentations, and
main_ssl end to end with Batch Effects Normalization."""

from __future__ import annotations

import math

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from Engineering.data.augment import AugmentSpec, augment, grid_views
from Engineering.Engines.WarpDrives.SSL.network import SSLConfig, SSLConfigError, SSLNet
from Engineering.Science.contrastive import nt_xent
from tests.conftest import run_executor


def _simclr_reference(z1, z2, tau):
    """SimCLR's NT-Xent as the paper writes it: 2N anchors, the other view the positive, 2N-2 negatives."""
    z = F.normalize(torch.cat([z1, z2]).double(), dim=1)
    n = len(z1)
    total = 0.0
    for i in range(2 * n):
        j = (i + n) % (2 * n)
        sims = [math.exp(float(z[i] @ z[k]) / tau) for k in range(2 * n) if k != i]
        total += -math.log(math.exp(float(z[i] @ z[j]) / tau) / sum(sims))
    return total / (2 * n)


def test_nt_xent_is_simclr_for_two_views_and_multi_positive_beyond():
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(5, 7, generator=g), torch.randn(5, 7, generator=g)
    for tau in (0.1, 0.5):
        got = float(nt_xent(torch.stack([z1, z2], 1), tau))
        assert got == pytest.approx(_simclr_reference(z1, z2, tau), rel=1e-6)
    # three views: each anchor averages the log-probability of its two positives
    z = torch.randn(4, 3, 6, generator=g)
    flat = F.normalize(z.reshape(12, 6).double(), dim=1)
    ref = 0.0
    for a in range(12):
        denom = sum(math.exp(float(flat[a] @ flat[k]) / 0.2) for k in range(12) if k != a)
        pos = [k for k in range(12) if k // 3 == a // 3 and k != a]
        ref += -sum(math.log(math.exp(float(flat[a] @ flat[k]) / 0.2) / denom) for k in pos) / 2
    assert float(nt_xent(z, 0.2)) == pytest.approx(ref / 12, rel=1e-6)
    # aligned views score better than unrelated ones
    assert nt_xent(torch.stack([z1, z1], 1), 0.1) < nt_xent(torch.stack([z1, z2], 1), 0.1)
    with pytest.raises(ValueError, match="at least 2 samples and 2 views"):
        nt_xent(torch.randn(3, 1, 4))


def test_minclr_views_are_distinct_cells_of_the_same_image():
    # a 4x4 grid of constant cells whose value names the cell; two images with different offsets
    cells = torch.arange(16, dtype=torch.float32).reshape(4, 4)
    img = cells.repeat_interleave(8, 0).repeat_interleave(8, 1)[None, None]  # (1, 1, 32, 32)
    x = torch.cat([img, img + 100])
    for seed in range(5):
        views = grid_views(x, 4, 4, torch.Generator().manual_seed(seed))
        assert len(views) == 4 and all(v.shape == x.shape for v in views)
        for i, base in ((0, 0), (1, 100)):
            picked = [float(v[i].mean()) - base for v in views]
            assert all(abs(p - round(p)) < 1e-4 for p in picked)  # one whole cell per view, from image i
            assert len({round(p) for p in picked}) == 4  # without replacement: never the same cell twice
    with pytest.raises(ValueError, match="need at least 5 grid cells"):
        grid_views(x, 5, 2, torch.Generator())


def test_augment_is_seeded_and_standardised():
    x = torch.rand(3, 2, 16, 16) * 50 + 10
    a = augment(x, AugmentSpec(), torch.Generator().manual_seed(1))
    b = augment(x, AugmentSpec(), torch.Generator().manual_seed(1))
    c = augment(x, AugmentSpec(), torch.Generator().manual_seed(2))
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, c)
    torch.testing.assert_close(a.mean((2, 3)), torch.zeros(3, 2), atol=1e-4, rtol=0)
    plain = augment(
        x,
        AugmentSpec(
            rot90=False, flip=False, blur_prob=0.0, standardise=False, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0)
        ),
        torch.Generator(),
    )
    torch.testing.assert_close(plain, x)  # every transform off: the identity


def test_resnet_encoder_2d_3d_and_config_errors():
    net = SSLNet(SSLConfig(in_channels=5, width=8, proj_hidden=16, proj_dim=4))
    h = net.encode(torch.randn(2, 5, 32, 32))
    assert h.shape == (2, 64) and net.project(h).shape == (2, 4)
    net3 = SSLNet(SSLConfig(is3D=True, in_channels=1, width=4, proj_hidden=8, proj_dim=4))
    assert net3.encode(torch.randn(2, 1, 8, 16, 16)).shape == (2, 32)
    with pytest.raises(SSLConfigError, match="depth must be 18, 34 or 50"):  # 50: IP-IRM's reference backbone
        SSLConfig(depth=101)
    with pytest.raises(SSLConfigError, match="stem must be one of small, imagenet"):
        SSLConfig(stem="big")


TINY_SSL = [
    "--batch_size",
    "8",
    "--num_epochs",
    "3",
    "--n_train_batches",
    "6",
    "--model§SSL§width",
    "4",
    "--model§SSL§proj_hidden",
    "16",
    "--model§SSL§proj_dim",
    "8",
    "--no-progress_bar",
    "--no-tbactive",
    "--lr",
    "3e-3",
]


@pytest.mark.parametrize(
    "method, extra",
    [
        ("simclr", ["--knn_label", "ef_class"]),
        pytest.param("minclr", ["--batch_groups", "site", "--bn_eval_mode", "group"], marks=pytest.mark.slow),
    ],
)
def test_main_ssl_trains_and_writes_latents(tiny_demo, tmp_path, method, extra):
    args = [
        *TINY_SSL,
        "--ssl_method",
        method,
        "--json§datadir",
        str(tiny_demo),
        "--json§save_path",
        str(tmp_path),
        "--json§DS_covariates§path",
        str(tiny_demo / "covariates.tsv"),
        "--json§DS_phenotypes§path",
        str(tiny_demo / "phenotypes.tsv"),
        "--fulltrainID",
        method,
        *extra,
    ]
    proc = run_executor("main_ssl.py", *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = pd.read_csv(tmp_path / method / "csv_logs" / "metrics.csv")
    for term in ("train_loss_epoch", "val_loss"):  # every logged loss term falls
        values = log[term].dropna().to_numpy()
        assert len(values) == 3 and values[-1] < values[0], (term, values)
    if "--knn_label" in extra:  # the kNN monitor is logged every validation
        assert log["val_knn_acc"].dropna().between(0, 1).all() and log["val_knn_acc"].dropna().size == 3
    out = tmp_path / method / "Output"
    table = pd.read_parquet(out / "emb.parquet")
    assert list(table.columns[-32:]) == [f"Z{j}" for j in range(32)]  # 8 x width pooled features
    assert not table.duplicated(["patientID", "fieldID", "instanceID", "key", "c", "t", "s"]).any()
    with h5py.File(out / "emb.h5") as h5:
        assert h5.attrs["n_samples"] == len(table) and h5.attrs["model"] == "SSL"
    assert not (out / "recon.h5").exists()  # embeddings only


def test_blur_keeps_constants_and_smooths_an_impulse():
    from Engineering.data.augment import _blur

    const = torch.full((1, 3, 9, 9), 2.5)
    torch.testing.assert_close(_blur(const, 1.0), const)
    impulse = torch.zeros(1, 1, 9, 9)
    impulse[0, 0, 4, 4] = 1.0
    y = _blur(impulse, 1.0)
    assert y.shape == impulse.shape and float(y.sum()) == pytest.approx(1.0, rel=1e-5)
    assert float(y[0, 0, 4, 4]) < 1.0 and float(y[0, 0, 4, 5]) == pytest.approx(float(y[0, 0, 5, 4]), rel=1e-6)


def test_main_erm_trains_and_reports_held_out_groups(tiny_demo, tmp_path):
    import json

    # a leave-one-site-out fold: the test split is every patient of one site
    cov = pd.read_csv(tiny_demo / "covariates.tsv", sep="\t", dtype={"FID": str})
    held = cov.loc[cov["site"] == cov["site"].iloc[0], "FID"].tolist()
    rest = [p for p in cov["FID"] if p not in held]
    folds = tmp_path / "folds.csv"
    pd.DataFrame({"train": [str(rest[2:])], "val": [str(rest[:2])], "test": [str(held)]}).to_csv(folds, index=False)
    args = [
        "--batch_size",
        "8",
        "--num_epochs",
        "3",
        "--n_train_batches",
        "4",
        "--model§ERM§width",
        "4",
        "--no-progress_bar",
        "--no-tbactive",
        "--json§datadir",
        str(tiny_demo),
        "--json§save_path",
        str(tmp_path),
        "--json§foldCSV",
        str(folds),
        "--json§DS_phenotypes§path",
        str(tiny_demo / "phenotypes.tsv"),
        "--json§DS_covariates§path",
        str(tiny_demo / "covariates.tsv"),
        "--batch_groups",
        "site",
        "--bn_eval_mode",
        "batch",
        "--fulltrainID",
        "erm",
    ]
    proc = run_executor("main_erm.py", *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = pd.read_csv(tmp_path / "erm" / "csv_logs" / "metrics.csv")
    train = log["train_loss_epoch"].dropna().to_numpy()
    assert len(train) == 3 and train[-1] < train[0]  # the training loss falls (val: see ood_report)
    assert log["val_loss"].dropna().size == 3 and log["val_acc"].dropna().between(0, 1).all()
    out = tmp_path / "erm" / "Output"
    report = json.loads((out / "ood_report.json").read_text())
    site = cov["site"].iloc[0]
    assert report["per_group"][site]["held_out"] is True and report["out_of_distribution"]["n"] > 0
    assert report["in_distribution"]["n"] == 0 and site not in report["groups_in_training"]
    pred = pd.read_csv(out / "predictions.tsv", sep="\t", dtype={"patientID": str})
    assert set(pred["patientID"]) == set(held) and pred["prediction"].isin(report["classes"]).all()
    assert report["accuracy"] == pytest.approx((pred["true"] == pred["prediction"]).mean())
    proc = run_executor("main_erm.py", *args[:-1], "bad", "--erm_label", "nope")
    assert proc.returncode == 2 and "--erm_label 'nope' is not a column" in proc.stderr
    assert not (tmp_path / "bad").exists()


@pytest.mark.slow  # default suite < 10 min: runs in make test-slow
def test_control_sample_batchnorm_runs_and_names_a_group_without_controls(tiny_demo, tmp_path):
    cov = pd.read_csv(tiny_demo / "covariates.tsv", sep="\t", dtype={"FID": str})
    site0 = cov["site"].iloc[0]
    # controls in every site but the first
    cov["treatment"] = np.where((cov.index % 2 == 0) & (cov["site"] != site0), "DMSO", "drug")
    path = tmp_path / "cov.tsv"
    cov.to_csv(path, sep="\t", index=False)
    base = [
        *TINY_SSL[:2],
        "--num_epochs",
        "1",
        *TINY_SSL[4:],
        "--json§datadir",
        str(tiny_demo),
        "--json§save_path",
        str(tmp_path),
        "--json§DS_covariates§path",
        str(path),
        "--batch_groups",
        "site",
        "--bn_controls",
        "treatment=DMSO",
    ]
    proc = run_executor("main_ssl.py", *base, "--bn_eval_mode", "group", "--fulltrainID", "ctrl")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f"--bn_controls: group '{site0}' holds no control sample" in proc.stderr.strip().splitlines()[-1]
    from Engineering.Engines.MainEngine import run
    from Engineering.Engines.registry import get
    from Engineering.errors import UserError

    with pytest.raises(UserError, match="give COL=VALUE"):  # in-process: the same checks, without a start-up
        run([*base[:-2], "--bn_controls", "treatment", "--bn_eval_mode", "batch", "--fulltrainID", "bad"], get("ssl"))
    assert not (tmp_path / "bad").exists()
    with pytest.raises(UserError, match="needs --bn_eval_mode batch or group"):
        run([*base, "--fulltrainID", "run"], get("ssl"))


def test_knn_monitor_on_planted_clusters():
    from Engineering.Engines.WarpDrives.SSL.engine import knn_leave_one_out

    g = torch.Generator().manual_seed(0)
    centres = torch.eye(3) * 10
    y = torch.arange(3).repeat_interleave(20)
    feats = centres[y] + torch.randn(60, 3, generator=g)
    assert float(knn_leave_one_out(feats, y, k=5)) == 1.0
    assert float(knn_leave_one_out(torch.randn(60, 3, generator=g), y, k=5)) < 0.6  # no structure: near chance
    assert knn_leave_one_out(feats[:2], y[:2]) is None
