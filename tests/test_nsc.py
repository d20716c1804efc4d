"""NSC / NSCB on planted profiles with known answers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from Engineering.Eval.nsc import nsc_scores, treatment_profiles

# compound, label, batch, angle (degrees): the nearest neighbours are known by construction
PLANTED = [
    ("c1", "A", 1, 0),
    ("c2", "A", 1, 10),
    ("c3", "B", 2, 25),
    ("c4", "B", 2, 35),
    ("c5", "A", 2, 90),
    ("c6", "B", 1, 100),
    ("c7", "C", 1, 200),
    ("c8", "C", 1, 210),
]


def _meta(rows):
    return pd.DataFrame(
        {
            "compound": [r[0] for r in rows],
            "treatment": [r[0] for r in rows],
            "batch": [r[2] for r in rows],
            "label": [r[1] for r in rows],
        }
    )


def _vectors(rows):
    a = np.deg2rad([r[3] for r in rows])
    return np.stack([np.cos(a), np.sin(a)], 1)


def test_known_nsc_and_nscb():
    res = nsc_scores(_vectors(PLANTED), _meta(PLANTED), n_boot=200, seed=0)
    # NSC: c1-c2, c3-c4, c7-c8 find their own label; c5 and c6 find each other (A vs B): 6 of 8
    assert res["nsc"].value == pytest.approx(6 / 8) and res["nsc"].n == 8
    # NSCB: every A/B profile's nearest other-batch neighbour has the other label; C lives in one batch: skipped
    assert res["nscb"].value == pytest.approx(0.0) and res["nscb"].n == 6
    assert res["nsc"].ci_low <= res["nsc"].value <= res["nsc"].ci_high
    # labels that follow the direction perfectly and are seen in both batches: 1.0 for both
    good = [("d1", "A", 1, 0), ("d2", "A", 2, 5), ("d3", "B", 1, 90), ("d4", "B", 2, 95)]
    res = nsc_scores(_vectors(good), _meta(good), n_boot=0, seed=0)
    assert res["nsc"].value == 1.0 and res["nscb"].value == 1.0


def test_profiles_are_well_means_then_treatment_medians():
    Z = np.array([[1.0], [3.0], [10.0], [12.0], [100.0], [102.0], [5.0]])
    meta = pd.DataFrame(
        {
            "compound": ["x"] * 6 + ["y"],
            "treatment": ["x@1"] * 6 + ["y@1"],
            "batch": [1] * 7,
            "label": ["L"] * 7,
            "well": ["w1", "w1", "w2", "w2", "w3", "w3", "v"],
        }
    )
    P, rows = treatment_profiles(Z, meta, well="well")
    # wells 2, 11, 101 -> the median 11 (a mean would be pulled to 38 by the outlier well)
    assert rows["treatment"].tolist() == ["x@1", "y@1"] and P[:, 0].tolist() == [11.0, 5.0]


def test_centring_and_control_whitening_run_and_need_controls():
    rng = np.random.default_rng(0)
    rows = (
        [(f"k{i}", "AB"[i % 2], 1 + i % 2, 0) for i in range(8)]
        + [("dmso", "ctrl", 1, 0)] * 4
        + [("dmso", "ctrl", 2, 0)] * 4
    )
    meta = _meta(rows)
    meta["treatment"] = meta["compound"] + "@" + pd.Series(range(len(rows))).astype(str)
    Z = rng.normal(size=(len(rows), 3))
    res = nsc_scores(Z, meta, n_boot=0, seed=0, center=True, controls="dmso", tvn_on=True)
    assert res["nsc"].n == 8  # the controls are not queries
    # one control sample in a plate is enough (the reference's (C + I)^(-1/2) is defined); none is an error
    assert nsc_scores(Z[:13], meta.iloc[:13], n_boot=0, seed=0, controls="dmso", tvn_on=True)["nsc"].n == 8
    with pytest.raises(Exception, match="plate 2 has no control sample"):
        nsc_scores(Z[:12], meta.iloc[:12], n_boot=0, seed=0, controls="dmso", tvn_on=True)
    with pytest.raises(Exception, match="TVN needs the control compound"):
        nsc_scores(Z, meta, n_boot=0, seed=0, tvn_on=True)


def test_main_benchmark_reports_nsc_and_nscb(tmp_path):
    import json

    from tests.test_benchmark_cli import load_main

    rows = PLANTED
    z = _vectors(rows)
    emb = pd.DataFrame(
        {
            "patientID": [f"p{i}" for i in range(len(rows))],
            "fieldID": "0",
            "instanceID": "0",
            "key": "primary",
            "c": 0,
            "t": 0,
            "s": 0,
            "Z0": z[:, 0],
            "Z1": z[:, 1],
        }
    )
    emb.to_parquet(tmp_path / "emb.parquet", index=False)
    labels = pd.DataFrame(
        {
            "patientID": emb["patientID"],
            "compound": [r[0] for r in rows],
            "moa": [r[1] for r in rows],
            "plate": [f"b{r[2]}" for r in rows],
        }
    )
    labels.to_csv(tmp_path / "labels.tsv", sep="\t", index=False)
    load_main()(
        [
            "--latents",
            f"run={tmp_path / 'emb.parquet'}",
            "--labels",
            str(tmp_path / "labels.tsv"),
            "--label_cols",
            "moa",
            "--nsc_label",
            "moa",
            "--compound_col",
            "compound",
            "--batch_col",
            "plate",
            "--n_boot",
            "50",
            "--n_perm",
            "10",
            "--n_splits",
            "2",
            "--out",
            str(tmp_path / "out"),
        ]
    )
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    run = metrics["run"] if "run" in metrics else metrics["runs"]["run"]
    assert run["nsc"]["value"] == pytest.approx(0.75) and run["nscb"]["value"] == pytest.approx(0.0)
