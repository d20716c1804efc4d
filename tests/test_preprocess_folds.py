"""make_folds: k-fold / Monte-Carlo splits, seeding, stratification, instance filter, file formats."""

from __future__ import annotations

import ast
import json
from collections import Counter
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest

from preprocess.make_folds import instance_counts, make_folds
from tests.conftest import run_main, run_tool

PATIENTS = [str(1000000 + i) for i in range(40)]


def test_kfold_test_sets_are_disjoint_and_cover_everyone():
    folds = make_folds(PATIENTS, "kfold", n_folds=5, val_frac=0.1, seed=3)
    assert len(folds) == 5
    tests = [set(f["test"]) for f in folds]
    assert set().union(*tests) == set(PATIENTS) and sum(map(len, tests)) == len(PATIENTS)
    for f in folds:
        assert len(f["val"]) == 4 and len(f["test"]) == 8
        assert (
            not (set(f["train"]) & set(f["val"]))
            and not (set(f["train"]) & set(f["test"]))
            and not (set(f["val"]) & set(f["test"]))
        )
        assert set(f["train"]) | set(f["val"]) | set(f["test"]) == set(PATIENTS)


def test_seed_decides_and_input_order_does_not():
    a = make_folds(PATIENTS, seed=1)
    assert a == make_folds(list(reversed(PATIENTS)), seed=1)
    assert a != make_folds(PATIENTS, seed=2)


def test_montecarlo_sizes():
    folds = make_folds(PATIENTS, "montecarlo", n_folds=3, test_frac=0.25, val_frac=0.1, seed=0)
    assert [(len(f["train"]), len(f["val"]), len(f["test"])) for f in folds] == [(26, 4, 10)] * 3
    assert len({tuple(f["test"]) for f in folds}) == 3


def test_stratification_balances_the_covariate():
    labels = np.array(["a"] * 30 + ["b"] * 10)
    for f in make_folds(PATIENTS, "kfold", n_folds=5, val_frac=0.0, seed=0, labels=labels):
        counts = Counter(labels[[PATIENTS.index(p) for p in f["test"]]])
        assert counts == {"a": 6, "b": 2}


@pytest.fixture()
def data_file(tmp_path) -> Path:
    """Patients 0-5 with one instance, 6-9 with two (instances 2 and 3), one empty group."""
    path = tmp_path / "data.h5"
    with h5py.File(path, "w") as h5:
        for i in range(10):
            for inst in ("2", "3") if i >= 6 else ("2",):
                h5.create_dataset(f"p{i}/20208/{inst}/primary", data=np.zeros((1, 1, 1, 2, 2)))
        h5.create_group("p99/20208/2")  # no dataset: not a usable patient
    return path


def test_instance_counts_and_filter(data_file, tmp_path):
    counts = instance_counts([str(data_file)])
    assert counts["p7"] == 2 and counts["p0"] == 1 and "p99" not in counts
    out = tmp_path / "folds.csv"
    assert (
        run_main("make_folds", data_file, "--out", out, "--min-instances", 2, "--n-folds", 2, "--val-frac", 0.25) == 0
    )
    table = pd.read_csv(out)
    assert list(table.columns) == ["train", "val", "test"] and len(table) == 2
    for _, row in table.iterrows():
        lists = [ast.literal_eval(row[c]) for c in ("train", "val", "test")]
        assert all(isinstance(x, str) for lst in lists for x in lst)
        assert sorted(sum(lists, [])) == ["p6", "p7", "p8", "p9"]


def test_cli_stratified_json(data_file, tmp_path):
    cov = tmp_path / "cov.csv"
    pd.DataFrame({"eid": [f"p{i}" for i in range(10)], "sex": [0, 1] * 5, "age": np.arange(10) * 3.5}).to_csv(
        cov, index=False
    )
    out = tmp_path / "folds.json"
    assert (
        run_main(
            "make_folds",
            data_file,
            "--out",
            out,
            "--covariates",
            cov,
            "--stratify",
            "sex",
            "--n-folds",
            5,
            "--val-frac",
            0,
        )
        == 0
    )
    folds = json.loads(out.read_text())
    assert len(folds) == 5 and all(len(f["test"]) == 2 for f in folds)
    for f in folds:
        assert sorted(int(p[1:]) % 2 for p in f["test"]) == [0, 1]


def test_cli_errors(data_file, tmp_path, capsys):
    proc = run_tool("make_folds", data_file, "--out", tmp_path / "f.csv", "--min-instances", 3)
    assert (
        proc.returncode == 2 and proc.stderr.strip() == "error: only 0 patient(s) left after filtering; need at least 2"
    )
    assert (
        run_main(
            "make_folds",
            data_file,
            "--out",
            tmp_path / "f.csv",
            "--covariates",
            tmp_path / "none.csv",
            "--stratify",
            "sex",
        )
        == 2
    )
    assert "covariate table not found" in capsys.readouterr().err
    assert not (tmp_path / "f.csv").exists()
