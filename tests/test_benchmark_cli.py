"""main_benchmark end to end: emb.parquet / emb.tsv / emb.h5 in, metrics.json/csv + report.html out."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest

from Engineering.errors import run_cli

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "Executors" / "main_benchmark.py"
N_PATIENTS, N_T, DIM = 45, 2, 8
SITES = np.array(["siteA", "siteB", "siteC"])


def load_main():
    spec = importlib.util.spec_from_file_location("main_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


main = load_main()


def latents(cls: np.ndarray, site: np.ndarray, class_sep: float, site_shift: float, seed: int) -> pd.DataFrame:
    """One row per (patient, frame): class and site planted along the first two latent axes."""
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(N_PATIENTS):
        for t in range(N_T):
            z = rng.normal(size=DIM)
            z[0] += class_sep * cls[p]
            z[1] += site_shift * (np.flatnonzero(SITES == site[p])[0] - 1)  # sites at -1, 0, +1
            rows.append([str(1000 + p), "20208", "2", "primary_cine_0", 0, t, 0, *z])
    return pd.DataFrame(
        rows, columns=["patientID", "fieldID", "instanceID", "key", "c", "t", "s"] + [f"Z{j}" for j in range(DIM)]
    )


def write_h5(path: Path, table: pd.DataFrame) -> None:
    zc = [f"Z{j}" for j in range(DIM)]
    with h5py.File(path, "w") as h5:
        h5.attrs.update({"latent_dim": DIM, "model": "test"})
        for pid, part in table.groupby("patientID"):
            arr = np.full((1, N_T, 1, DIM), np.nan, np.float32)
            arr[0, part["t"].to_numpy(), 0] = part[zc].to_numpy()
            h5.create_dataset(f"{pid}/20208/2/primary_cine_0", data=arr)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    rng = np.random.default_rng(0)
    cls = np.repeat([0, 1, 2], N_PATIENTS // 3)
    site = SITES[np.arange(N_PATIENTS) % 3]
    (root / "runA" / "Output").mkdir(parents=True)
    latents(cls, site, 8.0, 0.0, 1).to_parquet(root / "runA" / "Output" / "emb.parquet", index=False)
    latents(cls, site, 0.0, 8.0, 2).to_csv(root / "embB.tsv", sep="\t", index=False)
    write_h5(root / "embC.h5", latents(cls, site, 2.0, 0.0, 3))
    pd.DataFrame(
        {
            "FID": [str(1000 + p) for p in range(N_PATIENTS)],
            "cls": np.array(["a", "b", "c"])[cls],
            "ef": rng.uniform(0.3, 0.7, N_PATIENTS),
            "constant": "x",
        }
    ).to_csv(root / "pheno.tsv", sep="\t", index=False)
    pd.DataFrame({"FID": [str(1000 + p) for p in range(N_PATIENTS)], "site": site}).to_csv(
        root / "cov.tsv", sep="\t", index=False
    )
    with h5py.File(root / "data.h5", "w") as h5:
        for p in range(N_PATIENTS):
            h5.create_dataset(
                f"{1000 + p}/20208/2/primary_cine_0",
                data=rng.normal(size=(1, N_T, 1, 6, 6)).astype(np.float32) + cls[p],
            )
    return root


def common_args(data: Path, out: Path, runs=("runA", "B=embB.tsv", "C=embC.h5")) -> list[str]:
    latents = [f"{r.partition('=')[0]}={data / r.partition('=')[2]}" if "=" in r else str(data / r) for r in runs]
    return [
        "--latents",
        *latents,
        "--labels",
        str(data / "pheno.tsv"),
        str(data / "cov.tsv"),
        "--out",
        str(out),
        "--n_boot",
        "100",
        "--n_perm",
        "20",
        "--n_repeats",
        "1",
    ]


def test_cli_end_to_end(data, tmp_path, capsys):
    out = tmp_path / "report"
    main(
        common_args(data, out)
        + [
            "--label_cols",
            "cls",
            "ef",
            "--batch_col",
            "site",
            "--group_col",
            "patientID",
            "--pixels",
            str(data / "data.h5"),
            "--archetypes",
            "3",
        ]
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert list(metrics) == ["runA", "B", "C", "baseline_random", "baseline_pca_pixels"]
    for per in metrics.values():  # --archetypes K: the variance K archetypes explain, a fraction
        rec = per["archetype_r2"]
        assert 0 < rec["value"] <= 1 and rec["ci_low"] <= rec["value"] <= rec["ci_high"] and rec["note"] == "k = 3"
    for run, per in metrics.items():
        for name, rec in per.items():
            assert {"value", "ci_low", "ci_high", "direction"} <= set(rec), (run, name)
            assert rec["direction"] in ("higher", "lower")
    assert {
        "probe_balanced_accuracy/cls",
        "r2/ef",
        "knn_accuracy/cls",
        "retrieval_map/cls",
        "intrinsic_dimension",
        "pca_components_90",
        "batch_knn_balanced_accuracy/site",
        "batch_ilisi/site",
    } <= set(metrics["runA"])
    # The planted structure comes through the whole pipeline.
    assert metrics["runA"]["probe_balanced_accuracy/cls"]["value"] > 0.95
    assert metrics["baseline_random"]["probe_balanced_accuracy/cls"]["ci_low"] < 1 / 3 + 0.1
    assert metrics["B"]["batch_knn_balanced_accuracy/site"]["ci_low"] > 0.5
    assert metrics["runA"]["batch_ilisi/site"]["value"] > metrics["B"]["batch_ilisi/site"]["value"] + 0.3

    csv = pd.read_csv(out / "metrics.csv")
    assert {"run", "metric", "value", "ci_low", "ci_high", "direction"} <= set(csv.columns)
    assert len(csv) == sum(len(per) for per in metrics.values())
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 5  # radar + one bar figure per metric family
    assert "http://" not in html and "https://" not in html  # self-contained
    assert "<table>" in html and "radar chart" in html
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]  # atomic writes left no temp files
    assert "wrote" in capsys.readouterr().out


def test_cli_auto_labels_skip_unusable_columns_in_report(data, tmp_path):
    out = tmp_path / "auto"
    main(common_args(data, out, runs=("runA", "C=embC.h5")) + ["--aggregate", "patient"])
    html = (out / "report.html").read_text()
    assert "label &#x27;constant&#x27; skipped: a single class" in html
    assert "PCA-of-pixels baseline skipped" in html
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["runA"]["probe_balanced_accuracy/cls"]["n"] == N_PATIENTS


def test_run_without_a_checkpoint_is_an_error(data, tmp_path):
    from Engineering.errors import UserError

    out = tmp_path / "hook"
    with pytest.raises(UserError, match="no checkpoint in"):
        main(common_args(data, out, runs=("runA",)) + ["--label_cols", "cls", "--run", str(data / "runA")])
    assert not out.exists()  # input checks run before anything is written


@pytest.fixture(scope="module")
def nan_latents(data):
    table = pd.read_csv(data / "embB.tsv", sep="\t", dtype={"patientID": str})
    table.loc[3, "Z2"] = np.nan
    table.to_csv(data / "embNaN.tsv", sep="\t", index=False)
    pd.DataFrame({"FID": ["x1", "x2"], "cls": ["a", "b"]}).to_csv(data / "other.tsv", sep="\t", index=False)
    return data / "embNaN.tsv"


@pytest.mark.parametrize(
    "case, message",
    [
        ("no_overlap", "no overlap between latents and labels"),
        ("missing_column", "label column(s) nope not found"),
        ("single_class", "label 'constant': a single class"),
        ("nan_latents", "contain NaN"),
        ("bad_flag", "unrecognized arguments: --lat"),
        ("missing_file", "latents not found"),
        ("one_archetype", "--archetypes K needs K >= 2"),
        ("outlier_values", "outlier column 'cls' must hold 1/0 or true/false"),
        ("outlier_missing", "outlier column 'nope' not found"),
    ],
)
def test_bad_input_exits_2_with_one_line(data, nan_latents, tmp_path, capsys, case, message):
    out = tmp_path / "bad"
    base = ["--latents", str(data / "runA"), "--labels", str(data / "pheno.tsv"), "--out", str(out)]
    argv = {
        "no_overlap": ["--latents", str(data / "runA"), "--labels", str(data / "other.tsv"), "--out", str(out)],
        "missing_column": base + ["--label_cols", "nope"],
        "single_class": base + ["--label_cols", "cls", "constant"],
        "nan_latents": ["--latents", str(nan_latents), "--labels", str(data / "pheno.tsv"), "--out", str(out)],
        "bad_flag": base + ["--lat", "x"],
        "missing_file": ["--latents", str(data / "missing.parquet"), "--out", str(out)],
        "one_archetype": base + ["--archetypes", "1"],
        "outlier_values": base + ["--outlier_col", "cls"],
        "outlier_missing": base + ["--outlier_col", "nope"],
    }[case]
    assert run_cli(main, argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and message in err
    assert not out.exists()  # nothing half-written


def test_script_entry_point_exit_code(data, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--latents",
            str(data / "runA"),
            "--labels",
            str(data / "pheno.tsv"),
            "--label_cols",
            "nope",
            "--out",
            str(tmp_path / "x"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and "nope" in proc.stderr
