"""main_ssl.py --method ipirm end to end: every logged term, latents and the partition table, partitions that
survive --resume bit for bit (with a different worker count), and the errors a user can make."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from Engineering.io.checkpoints import read_checkpoint
from tests.conftest import run_executor
from tests.ssl.test_ssl import TINY_SSL


def _args(demo, save, *extra):
    return [
        *TINY_SSL,
        "--method",
        "ipirm",
        "--maximize_iter",
        "1",
        "--json§datadir",
        str(demo),
        "--json§save_path",
        str(save),
        "--model§IPIRM§max_epochs",
        "20",
        *extra,
    ]


def test_ipirm_trains_logs_every_term_and_writes_the_partition_table(tiny_demo, tmp_path):
    proc = run_executor(
        "main_ssl.py",
        *_args(tiny_demo, tmp_path, "--fulltrainID", "ip", "--num_epochs", "4", "--maximize_iter", "2", "--mixup_max"),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = pd.read_csv(tmp_path / "ip" / "csv_logs" / "metrics.csv")
    for term in ("train_loss_epoch", "train_cont", "train_env_loss", "train_irm_penalty", "val_loss"):
        values = log[term].dropna().to_numpy()
        assert len(values) == 4 and all(0 <= v < 1e3 for v in values), (term, values)
    # the whole-batch contrastive loss and the total fall; the subsets' terms change definition with every new
    # partition (the maximisation raises the penalty by design), so they are only checked to stay finite
    for term in ("train_loss_epoch", "train_cont"):
        values = log[term].dropna().to_numpy()
        assert values[-1] < values[0], (term, values)
    # 32 training samples: validation (8 samples) moves by +-0.3 from epoch to epoch for plain SimCLR too, so it
    # is checked for divergence only: within twice the chance level log(2B - 1) of B = 8
    assert (log["val_loss"].dropna() < 2 * np.log(15)).all()
    assert log["ipirm_max_objective"].dropna().size == 2  # maximisation steps at the start of epochs 0 and 2
    assert proc.stdout.count("IP-IRM epoch") == 2
    out = tmp_path / "ip" / "Output"
    emb = pd.read_parquet(out / "emb.parquet")
    assert list(emb.columns[-32:]) == [f"Z{j}" for j in range(32)]
    table = pd.read_csv(out / "partitions.tsv", sep="\t", dtype={"patientID": str})
    ckpt = read_checkpoint(next((tmp_path / "ip" / "Checkpoints").glob("best-*.ckpt")))
    parts = ckpt["ipirm"]["partitions"]
    n = ckpt["ipirm"]["split"]["n"]
    assert list(table.columns[:5]) == ["sample", "patientID", "fieldID", "instanceID", "key"]
    assert {"partition", "subset", "w0", "w1", "found_at_epoch"} <= set(table.columns)
    assert len(table) == n * len(parts) and sorted(table["partition"].unique()) == list(range(len(parts)))
    for p, weights in enumerate(parts):  # the table is the tested checkpoint's partitions, in dataset order
        rows = table[table["partition"] == p].sort_values("sample")
        assert rows["sample"].tolist() == list(range(n))
        torch.testing.assert_close(
            torch.tensor(rows[["w0", "w1"]].to_numpy(), dtype=torch.float32), weights, rtol=1e-5, atol=1e-6
        )
        assert (rows["subset"].to_numpy() == weights.argmax(1).numpy()).all()
    assert not table.duplicated(["patientID", "fieldID", "instanceID", "key", "c", "t", "s", "partition"]).any()


@pytest.mark.slow  # default suite < 10 min: runs in make test-slow
def test_partitions_survive_resume_bit_for_bit(tiny_demo, tmp_path):
    common = ["--num_epochs", "2", "--no-keep_cont", "--offline", "false", "--mixup", "--penalty_weight", "2"]
    proc = run_executor("main_ssl.py", *_args(tiny_demo, tmp_path, *common, "--fulltrainID", "whole"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    # the same run stopped after one epoch, then resumed with another worker count
    proc = run_executor(
        "main_ssl.py",
        *_args(tiny_demo, tmp_path, *common, "--num_epochs", "1", "--fulltrainID", "split", "--run_mode", "1"),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    first = read_checkpoint(tmp_path / "split" / "Checkpoints" / "last.ckpt")["ipirm"]
    proc = run_executor(
        "main_ssl.py", *_args(tiny_demo, tmp_path, *common, "--fulltrainID", "split", "--resume", "--num_workers", "1")
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    whole = read_checkpoint(tmp_path / "whole" / "Checkpoints" / "last.ckpt")
    split = read_checkpoint(tmp_path / "split" / "Checkpoints" / "last.ckpt")
    a, b = whole["ipirm"], split["ipirm"]
    # online bank: the first epoch has no features yet, the partitions come at epochs 1 (and none at 0)
    assert a["epochs"] == b["epochs"] == [1] and first["epochs"] == [] and first["bank"]["seen"].any()
    assert len(a["partitions"]) == len(b["partitions"]) == 1
    for p, q in zip(a["partitions"], b["partitions"]):
        assert torch.equal(p, q)
    assert torch.equal(a["theta"], b["theta"]) and a["split"] == b["split"]
    for name in ("z1", "z2", "seen"):
        assert torch.equal(a["bank"][name], b["bank"][name])
    for key, value in whole["state_dict"].items():  # and the weights the partitions were found with
        assert torch.equal(value, split["state_dict"][key]), key


def test_ipirm_user_errors(tiny_demo, tmp_path):
    from Engineering.config.loader import resolve
    from Engineering.Engines.registry import get
    from Engineering.Engines.WarpDrives.SSL.methods import ssl_engine
    from Engineering.errors import UserError

    proc = run_executor("main_ssl.py", *_args(tiny_demo, tmp_path, "--n_views", "3", "--fulltrainID", "v3"))
    assert proc.returncode == 2 and "IP-IRM contrasts two views" in proc.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "v3").exists()  # refused before the run folder is made
    cfg = resolve(["--method", "ipirm", "--mixup_max", "--offline", "false"], get("ssl")).cfg
    with pytest.raises(UserError, match="needs offline true"):
        ssl_engine(cfg, 1)
    with pytest.raises(UserError, match="env_num"):
        resolve(["--method", "ipirm", "--env_num", "1"], get("ssl"))


@pytest.mark.parametrize("flag", ["--ssl_method", "--method"])
def test_method_flag_and_its_old_name(flag):
    from Engineering.config.loader import resolve
    from Engineering.Engines.registry import get

    cfg = resolve([flag, "ipirm"], get("ssl")).cfg
    assert cfg.model.SSL.method == "ipirm"


@pytest.mark.slow
def test_ddp_gathers_the_bank_and_every_rank_gets_rank_zeros_partition(tiny_demo, tmp_path):
    """Two CPU processes: the epoch-0 bank (the initial encoder, per-sample seeded views) gathered across the
    ranks gives the partition a single process finds; every rank trains with the broadcast one."""
    common = ["--num_epochs", "1", "--run_mode", "1"]
    proc = run_executor("main_ssl.py", *_args(tiny_demo, tmp_path, *common, "--fulltrainID", "one"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = run_executor(
        "main_ssl.py",
        *_args(
            tiny_demo,
            tmp_path,
            *common,
            "--fulltrainID",
            "two",
            "--accelerator",
            "cpu",
            "--ndevices",
            "2",
            "--training_strategy",
            "ddp",
        ),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    one = read_checkpoint(tmp_path / "one" / "Checkpoints" / "last.ckpt")["ipirm"]
    two = read_checkpoint(tmp_path / "two" / "Checkpoints" / "last.ckpt")["ipirm"]
    assert one["epochs"] == two["epochs"] == [0] and one["split"]["digest"] == two["split"]["digest"]
    p, q = one["partitions"][0], two["partitions"][0]
    assert torch.equal(p.argmax(1), q.argmax(1))
    torch.testing.assert_close(p, q, atol=1e-3, rtol=0)
    assert proc.stdout.count("IP-IRM epoch 0") == 1  # rank 0 searched; rank 1 received


def test_partitions_refuse_another_training_split(tiny_demo, tmp_path):
    from types import SimpleNamespace

    from Engineering.config.loader import resolve
    from Engineering.data.datamodule import H5DataModule
    from Engineering.Engines.registry import get
    from Engineering.Engines.WarpDrives.SSL.ipirm import Maximisation, describe_split
    from Engineering.errors import UserError

    def split_of(fold):
        cfg = resolve(
            [
                "--method",
                "ipirm",
                "--json§datadir",
                str(tiny_demo),
                "--json§save_path",
                str(tmp_path),
                "--foldID",
                str(fold),
            ],
            get("ssl"),
        ).cfg
        return H5DataModule(cfg).dataset("train")

    ds0, ds1 = split_of(0), split_of(1)
    trainer = SimpleNamespace(datamodule=SimpleNamespace(dataset=lambda split: ds1))
    engine = SimpleNamespace(split=describe_split(ds0))
    with pytest.raises(UserError, match="partitions cover .* samples of another training split"):
        Maximisation().on_train_start(trainer, engine)
    engine.split = describe_split(ds1)  # the same split: accepted, and its keys are the dataset's, in order
    Maximisation().on_train_start(trainer, engine)
    assert engine.split["keys"]["patientID"] == [ds1.describe(i)["patientID"] for i in range(len(ds1))]
