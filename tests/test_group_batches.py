"""Group-pure batches and the BatchNorm evaluation policy (Batch Effects Normalization, Lin & Lu, MLCB 2022)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from Engineering.data.group_batches import GroupBatchSampler, GroupChunks, group_codes
from Engineering.errors import UserError
from Engineering.Science.batchnorm import batch_statistics, batchnorm_layers, fixed_statistics, group_statistics

# 5 groups of very different sizes: 3 is smaller than the batch
SIZES = [40, 17, 3, 25, 9]
CODES = np.repeat(np.arange(len(SIZES)), SIZES)
rng = np.random.default_rng(0)
CODES = CODES[rng.permutation(len(CODES))]  # groups interleaved in the dataset


def test_every_training_batch_is_one_group_without_duplicates():
    s = GroupBatchSampler(CODES, batch_size=8, seed=3, n_batches=400)
    batches = list(s)
    assert len(batches) == len(s) == 400
    for b in batches:
        assert len(b) == 8 and len(set(CODES[b])) == 1
        if SIZES[CODES[b[0]]] >= 8:
            assert len(set(b)) == 8  # without replacement
        else:
            assert set(b) <= set(np.flatnonzero(CODES == CODES[b[0]]))  # the small group, drawn with replacement
    # the group is drawn uniformly over groups, not over samples (counts ~ 80 each; 3 sigma ~ 25)
    counts = np.bincount([CODES[b[0]] for b in batches], minlength=len(SIZES))
    assert np.all(np.abs(counts - 80) < 27), counts


def test_batches_are_a_function_of_seed_and_epoch_and_resume_exactly():
    a = GroupBatchSampler(CODES, 8, seed=3, n_batches=20)
    b = GroupBatchSampler(CODES, 8, seed=3, n_batches=20)
    a.set_epoch(5)
    b.set_epoch(5)
    assert list(a) == list(b)  # a resumed run (a new sampler) sees the same epoch-5 batches
    b.set_epoch(6)
    assert list(a) != list(b)
    epoch = {"n": 4}
    c = GroupBatchSampler(CODES, 8, seed=3, n_batches=20, epoch_fn=lambda: epoch["n"])
    a.set_epoch(4)
    assert [[i for i, _ in batch] for batch in c] == list(a)
    assert all(e == 4 for batch in c for _, e in batch)  # (index, epoch) pairs seed the augmentation
    assert list(GroupBatchSampler(CODES, 8, seed=4, n_batches=20)) != list(
        GroupBatchSampler(CODES, 8, seed=3, n_batches=20)
    )


def test_ranks_get_group_pure_batches_of_one_stream():
    r0 = list(GroupBatchSampler(CODES, 8, seed=1, n_batches=30, rank=0, world=2))
    r1 = list(GroupBatchSampler(CODES, 8, seed=1, n_batches=30, rank=1, world=2))
    whole = GroupBatchSampler(CODES, 8, seed=1, n_batches=30, world=2).batches(0)
    assert len(r0) == len(r1) == 30
    assert [list(b) for b in whole[0::2]] == r0 and [list(b) for b in whole[1::2]] == r1
    assert all(len(set(CODES[b])) == 1 for b in r0 + r1)
    assert [CODES[b[0]] for b in r0] != [CODES[b[0]] for b in r1]  # the ranks draw different groups


def test_evaluation_chunks_cover_every_sample_once_group_by_group():
    for world in (1, 2, 3):
        seen = []
        for rank in range(world):
            chunks = GroupChunks(CODES, 8, rank, world)
            assert chunks.mine == sorted(chunks.mine) and len(chunks) >= 1  # a contiguous run, never empty
            for k, c in zip(chunks.mine, chunks):
                g = chunks.chunk_groups[k]
                assert 1 <= len(c) <= 8 and set(CODES[c]) == {g}
                seen += c
        assert sorted(seen) == list(range(len(CODES)))
    few = GroupChunks(np.zeros(3, np.int64), 8, rank=1, world=2)  # one chunk, two ranks: rank 1 repeats it
    assert list(few) == [[0, 1, 2]]


def test_group_codes_from_covariate_columns():
    table = pd.DataFrame({"patientID": ["a", "b", "c"], "exp": ["e1", "e1", "e2"], "plate": [1, 2, 1]})
    codes, names = group_codes(["a", "b", "c", "a"], table, ["exp", "plate"], "cov.tsv")
    assert names == ["e1/1", "e1/2", "e2/1"] and codes.tolist() == [0, 1, 2, 0]
    with pytest.raises(UserError, match=r"column\(s\) plat not in cov.tsv \(columns: exp, plate\)"):
        group_codes(["a"], table, ["plat"], "cov.tsv")
    with pytest.raises(UserError, match="1 sample\\(s\\) have no row in cov.tsv \\(first: patient z\\)"):
        group_codes(["a", "z"], table, ["exp"], "cov.tsv")


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(2, 4, 3, padding=1),
            nn.BatchNorm2d(4),
            nn.ReLU(),
            nn.Conv2d(4, 4, 3, padding=1),
            nn.BatchNorm2d(4),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(4 * 6 * 6, 5),
            nn.BatchNorm1d(5),
        )

    def forward(self, x):
        return self.body(x)


@pytest.fixture
def net():
    torch.manual_seed(0)
    m = _Net()
    m.train()
    for _ in range(3):  # non-trivial running buffers
        m(torch.randn(16, 2, 6, 6) * 3 + 1)
    return m.eval()


def _buffers(m):
    return {k: v.clone() for k, v in m.state_dict().items() if "running" in k or "num_batches" in k}


def test_bn_policies_never_touch_the_running_buffers_and_group_equals_one_pass(net):
    before = _buffers(net)
    group = torch.randn(23, 2, 6, 6) * 2 + 5  # a plate with its own intensity shift
    chunks = list(group.split(7))  # 7 + 7 + 7 + 2
    with torch.no_grad():
        running = net(group)
        with batch_statistics(net):
            whole = net(group)  # one pass over the whole group with its statistics
            per_chunk = torch.cat([net(c) for c in chunks])
        stats = group_statistics(net, net, lambda: iter(chunks))
        with fixed_statistics(net, stats):
            grouped = torch.cat([net(c) for c in chunks])
    after = _buffers(net)
    assert all(torch.equal(before[k], after[k]) for k in before)  # no mode changed the buffers
    torch.testing.assert_close(grouped, whole, atol=1e-5, rtol=1e-5)  # group stats over chunks = one pass
    assert not torch.allclose(per_chunk, whole, atol=1e-3)  # chunk-wise batch statistics differ ...
    assert not torch.allclose(running, whole, atol=1e-3)  # ... and so do the running ones
    # the statistics are those of the group at each layer (the first layer's input is the conv output)
    with torch.no_grad():
        first = net.body[0](group)
    torch.testing.assert_close(stats[0][0].float(), first.mean((0, 2, 3)), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(stats[0][1].float(), first.var((0, 2, 3), unbiased=False), atol=1e-4, rtol=1e-4)
    assert len(stats) == len(batchnorm_layers(net)) == 3
    # after the with blocks every layer is its usual self again
    with torch.no_grad():
        torch.testing.assert_close(net(group), running)


def test_a_layer_the_measured_path_does_not_reach_uses_batch_statistics(net):
    other = nn.BatchNorm1d(3)
    model = nn.ModuleDict({"net": net, "other": other}).eval()
    chunks = [torch.randn(5, 2, 6, 6)]
    stats = group_statistics(model, net, lambda: iter(chunks))
    assert stats[-1] == (None, None)
    x = torch.randn(6, 3) * 4 + 2
    with torch.no_grad(), fixed_statistics(model, stats):
        y = other(x)
    torch.testing.assert_close(y.mean(0), torch.zeros(3), atol=1e-5, rtol=0)


def _group_args(tiny_demo, tmp_path, *extra):
    from tests.conftest import tiny_args

    return tiny_args(
        tiny_demo,
        tmp_path,
        "--batch_groups",
        "site",
        "--json§DS_covariates§path",
        str(tiny_demo / "covariates.tsv"),
        *extra,
    )


def test_datamodule_loaders_are_group_pure_and_cover_the_test_split(tiny_demo, tmp_path):
    from Engineering.config.loader import resolve
    from Engineering.data.datamodule import H5DataModule
    from Engineering.data.labels import read_label_table
    from Engineering.Engines import registry

    cfg = resolve(_group_args(tiny_demo, tmp_path), registry.get("diffAE")).cfg
    dm = H5DataModule(cfg)
    site = read_label_table(tiny_demo / "covariates.tsv").set_index("patientID")["site"]
    train = dm.dataset("train")
    for batch in dm.train_dataloader():
        sites = {site[train.records[train.samples[int(i)].record].patientID] for i in batch["index"]}
        assert len(sites) == 1
    test, seen = dm.dataset("test"), []
    for batch in dm.test_dataloader():
        sites = {site[test.records[test.samples[int(i)].record].patientID] for i in batch["index"]}
        assert len(sites) == 1 and len(batch["index"]) <= cfg.training.batch_size
        seen += batch["index"].tolist()
    assert sorted(seen) == list(range(len(test)))
    with pytest.raises(UserError, match="column\\(s\\) sight not in"):
        H5DataModule(
            resolve(_group_args(tiny_demo, tmp_path, "--batch_groups", "sight"), registry.get("diffAE")).cfg
        ).train_dataloader()


@pytest.mark.slow  # default suite < 10 min: runs in make test-slow
def test_group_batches_train_and_test_under_two_process_ddp(tiny_demo, tmp_path):
    import h5py

    from tests.conftest import run_executor

    proc = run_executor(
        "main_diffAE.py",
        *_group_args(
            tiny_demo,
            tmp_path,
            "--fulltrainID",
            "g",
            "--accelerator",
            "cpu",
            "--ndevices",
            "2",
            "--training_strategy",
            "ddp",
            "--bn_eval_mode",
            "batch",
            "--test_emb_only",
        ),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = pd.read_csv(tmp_path / "g" / "Output" / "emb.tsv", sep="\t", dtype={"patientID": str})
    assert not table.duplicated(["patientID", "fieldID", "instanceID", "key", "c", "t", "s"]).any()
    with h5py.File(tmp_path / "g" / "Output" / "emb.h5") as h5:
        assert h5.attrs["n_samples"] == len(table) > 0
    proc = run_executor(
        "main_diffAE.py",
        *_group_args(tiny_demo, tmp_path, "--bn_eval_mode", "group", "--batch_groups", "", "--fulltrainID", "nogroups"),
    )
    assert proc.returncode == 2 and "--bn_eval_mode group" in proc.stderr
    assert not (tmp_path / "nogroups").exists()  # refused before anything was written


def test_every_rank_trains_on_group_pure_batches_under_ddp(tiny_demo, tmp_path):
    from tests.conftest import REPO, run_executor

    log = tmp_path / "purity.log"
    args = [
        "--plugins",
        "purity_probe",
        "--task",
        "purity",
        "--batch_size",
        "4",
        "--num_epochs",
        "2",
        "--n_train_batches",
        "3",
        "--model§SSL§width",
        "4",
        "--model§SSL§proj_hidden",
        "8",
        "--no-progress_bar",
        "--no-tbactive",
        "--json§datadir",
        str(tiny_demo),
        "--json§save_path",
        str(tmp_path),
        "--json§DS_covariates§path",
        str(tiny_demo / "covariates.tsv"),
        "--batch_groups",
        "site",
        "--accelerator",
        "cpu",
        "--ndevices",
        "2",
        "--training_strategy",
        "ddp",
        "--run_mode",
        "1",
    ]
    proc = run_executor(
        "main.py", *args, env={"PYTHONPATH": f"{REPO}:{REPO / 'tests' / 'plugins'}", "PURITY_LOG": str(log)}
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [tuple(map(int, line.split())) for line in log.read_text().splitlines()]
    assert {r for r, _, _ in rows} == {0, 1} and len(rows) == 2 * 2 * 3  # 2 ranks x 2 epochs x 3 batches
    assert all(n == 1 for _, n, _ in rows)  # every batch on every rank is one group
    assert len({g for _, _, g in rows}) > 1  # and the groups vary
