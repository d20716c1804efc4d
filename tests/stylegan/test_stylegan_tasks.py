"""main_stylegan -> main_restyle -> main_iid end to end on the tiny 3-channel demo cohort (the tasks' default
data is its full-sized twin, @demo_mc): every logged loss term, the outputs, the generator frozen under ReStyle,
the held-out groups, exact resume of all three."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from Engineering.Engines import registry
from Engineering.Engines.MainEngine import run
from Engineering.errors import UserError
from Engineering.io.checkpoints import read_checkpoint

TINY_GAN = [
    "--batch_size",
    "4",
    "--n_train_batches",
    "3",
    "--n_val_batches",
    "1",
    "--no-progress_bar",
    "--no-tbactive",
    "--input_shape",
    "32,32",
    "--model§StyleGAN2§style_dim",
    "16",
    "--model§StyleGAN2§n_mlp",
    "2",
    "--model§StyleGAN2§channel_max",
    "8",
    "--model§StyleGAN2§r1_every",
    "2",
    "--model§StyleGAN2§pl_every",
    "2",
    "--model§StyleGAN2§n_samples",
    "4",
]
# no --input_shape: ReStyle takes the image size of its --generator
TINY_RESTYLE = [
    "--batch_size",
    "4",
    "--n_train_batches",
    "4",
    "--n_val_batches",
    "1",
    "--no-progress_bar",
    "--no-tbactive",
    "--model§ReStyle§width",
    "4",
    "--lr",
    "3e-3",
]


def _data(demo, save):
    return ["--json§datadir", str(demo), "--json§save_path", str(save)]


def _log(run_dir):
    return pd.read_csv(run_dir / "csv_logs" / "metrics.csv")


@pytest.fixture(scope="module")
def gan_run(tiny_demo_mc, tmp_path_factory):
    save = tmp_path_factory.mktemp("gan")
    run([*TINY_GAN, *_data(tiny_demo_mc, save), "--fulltrainID", "g", "--num_epochs", "2"], registry.get("stylegan"))
    return save / "g"


def test_stylegan_trains_and_writes_samples(gan_run):
    log = _log(gan_run)
    for term in (
        "train_loss_d",
        "train_loss_g",
        "train_r1",
        "train_pl",
        "train_pl_length",
        "train_real_score",
        "train_fake_score",
        "val_loss",
    ):
        values = log[term].dropna().to_numpy()
        assert len(values) == 2 and np.isfinite(values).all(), (term, values)
    assert (log["train_r1"].dropna() >= 0).all() and (log["train_pl_length"].dropna() > 0).all()
    assert {p.name for p in (gan_run / "Samples").iterdir()} == {"epoch_0000.png", "epoch_0001.png"}
    out = gan_run / "Output"
    for name in ("samples.png", "samples.h5", "gan_metrics.json"):
        assert (out / name).is_file(), name
    import json

    metrics = json.loads((out / "gan_metrics.json").read_text())
    assert metrics["finite"] and metrics["n_samples"] == 4 and math.isfinite(metrics["sample_std"])
    ckpt = read_checkpoint(gan_run / "Checkpoints" / "last.ckpt")
    assert int(ckpt["state_dict"]["n_steps"]) == 6 and int(ckpt["state_dict"]["n_images"]) == 24
    assert float(ckpt["state_dict"]["ema_net.w_avg"].norm()) > 0  # the average latent was tracked
    # one checkpoint rule (issue 33): the test's samples come from last.ckpt, as main_restyle --generator reads,
    # never from the "best" checkpoint by a val_loss that does not measure sample quality
    import h5py

    with h5py.File(out / "samples.h5") as f:
        assert f.attrs["checkpoint"] == str(gan_run / "Checkpoints" / "last.ckpt")


def test_gan_checkpoint_rule_is_last():
    from pathlib import Path

    from Engineering.Engines.WarpDrives.StyleGAN2.engine import GANRun

    assert GANRun.generator_checkpoint(Path("r/Checkpoints/best-epoch=001-step=6.ckpt")) == Path(
        "r/Checkpoints/last.ckpt"
    )
    assert GANRun.generator_checkpoint(Path("elsewhere/my_generator.ckpt")) == Path("elsewhere/my_generator.ckpt")
    assert GANRun.generator_checkpoint(None) is None


def test_stylegan_refuses_load_best(tiny_demo_mc, tmp_path):
    with pytest.raises(UserError, match="load_best"):
        run(
            [*TINY_GAN, *_data(tiny_demo_mc, tmp_path), "--run_mode", "2", "--resume", "--load_best"],
            registry.get("stylegan"),
        )


@pytest.fixture(scope="module")
def restyle_run(gan_run, tiny_demo_mc, tmp_path_factory):
    save = tmp_path_factory.mktemp("restyle")
    run(
        [
            *TINY_RESTYLE,
            *_data(tiny_demo_mc, save),
            "--fulltrainID",
            "r",
            "--num_epochs",
            "3",
            "--generator",
            str(gan_run),
            "--write_noise",
        ],
        registry.get("restyle"),
    )
    return save / "r"


def test_restyle_inverts_the_frozen_generator(gan_run, restyle_run):
    g_before = read_checkpoint(gan_run / "Checkpoints" / "last.ckpt")["state_dict"]
    log = _log(restyle_run)
    for term in ("train_loss_epoch", "train_l2", "train_ssim", "val_loss", "val_ssim"):
        values = log[term].dropna().to_numpy()
        assert len(values) == 3 and np.isfinite(values).all(), (term, values)
    assert log["train_loss_epoch"].dropna().iloc[-1] < log["train_loss_epoch"].dropna().iloc[0]
    out = restyle_run / "Output"
    table = pd.read_parquet(out / "emb.parquet")
    assert len([c for c in table.columns if c.startswith("Z")]) == 8 * 16  # n_latent x style_dim at 32x32
    mean = pd.read_csv(out / "style_mean" / "emb.tsv", sep="\t")
    z = table[[f"Z{i}" for i in range(128)]].to_numpy().reshape(-1, 8, 16).mean(1)
    np.testing.assert_allclose(mean[[f"Z{i}" for i in range(16)]].to_numpy(), z, rtol=1e-5, atol=1e-6)
    assert (out / "recon.h5").is_file() and (out / "metrics.csv").is_file()
    import h5py

    with h5py.File(out / "noise_maps.h5") as h5:  # --write_noise: one map per noise input, rows as emb's
        assert list(h5.attrs["sizes"]) == [4, 8, 8, 16, 16, 32, 32]
        for i, side in enumerate(h5.attrs["sizes"]):
            m = h5[f"noise_{i}"][()]
            assert m.shape == (len(table), 1, side, side) and np.isfinite(m).all() and m.std() > 0
        ids = pd.DataFrame(
            {c: h5[c].asstr()[()] if h5[c].dtype.kind == "O" else h5[c][()] for c in ("patientID", "instanceID", "t")}
        )
    key = ["patientID", "instanceID", "t"]
    assert sorted(map(tuple, ids[key].astype(str).to_numpy())) == sorted(map(tuple, table[key].astype(str).to_numpy()))
    after = read_checkpoint(restyle_run / "Checkpoints" / "last.ckpt")["state_dict"]
    for k, v in g_before.items():  # the inverted generator is the run's EMA generator, unchanged
        if k.startswith("ema_net."):
            assert torch.equal(after["net.generator." + k[len("ema_net.") :]], v), k


def test_restyle_refuses_a_missing_or_mismatched_generator(gan_run, tiny_demo_mc, tmp_path):
    with pytest.raises(UserError, match="--generator"):
        run([*TINY_RESTYLE, *_data(tiny_demo_mc, tmp_path), "--num_epochs", "1"], registry.get("restyle"))
    with pytest.raises(UserError, match="makes 3-channel 32x32"):
        run(
            [
                *TINY_RESTYLE,
                *_data(tiny_demo_mc, tmp_path),
                "--num_epochs",
                "1",
                "--input_shape",
                "16,16",
                "--generator",
                str(gan_run),
            ],
            registry.get("restyle"),
        )


IID_DEMO = [
    "--batch_size",
    "8",
    "--n_train_batches",
    "3",
    "--n_val_batches",
    "2",
    "--no-progress_bar",
    "--no-tbactive",
    "--input_shape",
    "32,32",
    "--model§IID§width",
    "4",
    "--model§IID§emb_dim",
    "8",
    "--targets",
    "wall_class",
    "--ood_column",
    "site",
    "--ood_test_groups",
    "siteC",
    "--ood_val_groups",
    "siteB",
]


def _sites(demo):
    from Engineering.data.labels import read_label_table

    return read_label_table(demo / "covariates.tsv").drop_duplicates("patientID").set_index("patientID")["site"]


def _iid_data(demo, save):
    return [
        *_data(demo, save),
        "--json§DS_phenotypes§path",
        str(demo / "phenotypes.tsv"),
        "--json§DS_covariates§path",
        str(demo / "covariates.tsv"),
    ]


@pytest.mark.parametrize(
    "flags",
    [
        pytest.param([], marks=pytest.mark.slow),
        ["--noise", "--style", "--loss_coef", "0.5", "--model§IID§cutmix_prob", "1"],
    ],
)
def test_iid_trains_on_kept_groups_and_reports_held_out_ones(flags, restyle_run, tiny_demo_mc, tmp_path):
    res = run(
        [
            *IID_DEMO,
            *_iid_data(tiny_demo_mc, tmp_path),
            "--fulltrainID",
            "p",
            "--num_epochs",
            "2",
            "--encoder",
            str(restyle_run),
            *flags,
        ],
        registry.get("iid"),
    )
    log = _log(tmp_path / "p")
    for term in ("train_loss_epoch", "train_acc_epoch", "val_loss", "val_acc"):
        values = log[term].dropna().to_numpy()
        assert len(values) == 2 and np.isfinite(values).all(), (term, values)
    out = tmp_path / "p" / "Output"
    report = pd.read_csv(out / "ood_report.csv", dtype={"group": str})
    assert list(report.columns) == ["group", "split", "n", "accuracy"]
    pred = pd.read_csv(out / "predictions.tsv", sep="\t", dtype={"patientID": str})
    site = _sites(tiny_demo_mc)
    pred["site"] = pred["patientID"].map(site)
    assert set(pred.loc[pred["split"] == "ood", "site"]) == {"siteC"}  # the OOD test: all of siteC, only siteC
    assert "siteB" not in set(pred["site"])  # OOD validation groups are never tested on
    expected = pred.groupby(["site", "split"])["patientID"].nunique()
    assert len(report) == len(expected)  # one row per group present in the id or OOD test subjects
    for row in report.itertuples():
        assert row.n == expected[(row.group, row.split)] and 0 <= row.accuracy <= 1
    assert res["ood_report"]["ood_test_groups"] == ["siteC"] and res["ood_report"]["style"] == ("--style" in flags)
    for split in ("id", "ood"):  # the overall accuracy is over subjects, as the rows are
        rows = report[report["split"] == split]
        assert res["ood_report"][f"{split}_n_subjects"] == rows["n"].sum()
        assert res["ood_report"][f"{split}_accuracy"] == pytest.approx(
            (rows["accuracy"] * rows["n"]).sum() / rows["n"].sum()
        )
    for name in ("ood_report.json", "ood_report.html", "wilds_id_test_pred.csv", "wilds_ood_test_pred.csv"):
        assert (out / name).is_file(), name
    wilds = (out / "wilds_ood_test_pred.csv").read_text().split()
    assert len(wilds) == int((pred["split"] == "ood").sum())


def test_ood_splits_hold_the_groups_out(tiny_demo_mc, tmp_path):
    from Engineering.config.loader import resolve
    from Engineering.Engines.WarpDrives.IID.engine import OODSplits

    cfg = resolve([*IID_DEMO, *_iid_data(tiny_demo_mc, tmp_path)], registry.get("iid")).cfg
    dm = OODSplits(cfg)
    site = _sites(tiny_demo_mc)
    groups = {s: {site[p] for p in dm.split_ids(s)} for s in ("train", "val", "test")}
    assert groups["train"] == {"siteA"} and groups["val"] == {"siteA", "siteB"} and groups["test"] == {"siteA", "siteC"}
    assert not dm.split_ids("train") & (dm.ood_test | dm.ood_val)
    for bad, match in (
        (["--ood_test_groups", "siteZ"], "siteZ"),
        (["--ood_column", "nope"], "nope"),
        (["--ood_val_groups", "siteC"], "both"),
    ):
        with pytest.raises(UserError, match=match):
            OODSplits(resolve([*IID_DEMO, *_iid_data(tiny_demo_mc, tmp_path), *bad], registry.get("iid")).cfg)


def _resume_args(task, tmp_path, demo, gan_run, restyle_run):
    if task == "stylegan":
        return [*TINY_GAN, *_data(demo, tmp_path)]
    if task == "restyle":
        return [*TINY_RESTYLE, *_data(demo, tmp_path), "--generator", str(gan_run)]
    # every random draw of the predictor: dropout, CutMix's boxes and pairs, the noise maps' injection
    return [
        *IID_DEMO,
        *_iid_data(demo, tmp_path),
        "--encoder",
        str(restyle_run),
        "--noise",
        "--style",
        "--loss_coef",
        "0.5",
        "--model§IID§cutmix_prob",
        "0.5",
    ]


def _interrupted_after_the_first_epoch(monkeypatch):
    """The next run's Trainer stops after its first epoch, as a killed job would (its schedule still planned
    for every epoch: a cosine decay over --num_epochs must resume where it was)."""
    import lightning as L

    from Engineering.Engines import MainEngine

    class Stop(L.Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            trainer.should_stop = True

    real = MainEngine.build_trainer

    def build(*args, **kwargs):
        trainer = real(*args, **kwargs)
        trainer.callbacks.append(Stop())
        return trainer

    monkeypatch.setattr(MainEngine, "build_trainer", build)


@pytest.mark.slow
@pytest.mark.parametrize("task", ["stylegan", "restyle", "iid"])
def test_resume_is_exact(task, request, tiny_demo_mc, tmp_path, monkeypatch):
    gan = request.getfixturevalue("gan_run")
    restyle = request.getfixturevalue("restyle_run") if task == "iid" else None
    common = [*_resume_args(task, tmp_path, tiny_demo_mc, gan, restyle), "--num_epochs", "2"]
    run([*common, "--fulltrainID", "straight"], registry.get(task))
    with monkeypatch.context() as m:
        _interrupted_after_the_first_epoch(m)
        run([*common, "--fulltrainID", "split"], registry.get(task))
    assert read_checkpoint(tmp_path / "split" / "Checkpoints" / "last.ckpt")["epoch"] == 0
    run([*common, "--fulltrainID", "split", "--resume"], registry.get(task))
    a = read_checkpoint(tmp_path / "straight" / "Checkpoints" / "last.ckpt")
    b = read_checkpoint(tmp_path / "split" / "Checkpoints" / "last.ckpt")
    assert a["global_step"] == b["global_step"]
    for k, v in a["state_dict"].items():
        assert torch.equal(v, b["state_dict"][k]), k


@pytest.mark.slow
def test_stylegan_trains_under_two_process_ddp(tiny_demo_mc, tmp_path):
    from tests.conftest import run_executor

    proc = run_executor(
        "main_stylegan.py",
        *TINY_GAN,
        *_data(tiny_demo_mc, tmp_path),
        "--fulltrainID",
        "d",
        "--num_epochs",
        "2",
        "--accelerator",
        "cpu",
        "--ndevices",
        "2",
        "--training_strategy",
        "ddp",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "ddp_find_unused_parameters_true" in proc.stdout  # plain DDP would wait for the D step's G gradients
    log = _log(tmp_path / "d")
    for term in ("train_loss_d", "train_loss_g", "train_r1", "train_pl", "val_loss"):
        values = log[term].dropna().to_numpy()
        assert len(values) == 2 and np.isfinite(values).all(), (term, values)
    state = read_checkpoint(tmp_path / "d" / "Checkpoints" / "last.ckpt")["state_dict"]
    # 3 steps per epoch on each rank; the EMA's image count is the world's: 2 ranks x batch 4 per step
    assert int(state["n_steps"]) == 6 and int(state["n_images"]) == 6 * 4 * 2
    assert (tmp_path / "d" / "Output" / "samples.png").is_file()


def test_iid_starts_an_imagenet_resnet_from_local_torchvision_weights(tiny_demo_mc, tmp_path, capsys):
    from tests.iid.test_iid_predictor import torchvision_resnet_state

    weights = tmp_path / "resnet18.pth"
    torch.save(torchvision_resnet_state(18), weights)
    common = [
        *IID_DEMO,
        *_iid_data(tiny_demo_mc, tmp_path),
        "--num_epochs",
        "1",
        "--n_train_batches",
        "1",
        "--model§IID§weights",
        str(weights),
    ]
    with pytest.raises(UserError, match="need model§IID§stem imagenet"):
        run([*common, "--fulltrainID", "small"], registry.get("iid"))
    run(
        [*common, "--fulltrainID", "tv", "--model§IID§stem", "imagenet", "--model§IID§width", "64"], registry.get("iid")
    )
    out = capsys.readouterr().out
    assert "IID backbone: 120 tensors from" in out and "not used: fc.bias, fc.weight" in out
    assert "adapted" not in out  # 3 channels: the RGB stem as it is
    assert (tmp_path / "tv" / "Output" / "ood_report.csv").is_file()
