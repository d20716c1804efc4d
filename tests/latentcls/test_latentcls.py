"""main_latentcls: predictors on planted latents, train-only scalers, outputs, bad input; DiffAE latent
manipulation and the benchmark's model-dependent metrics (--run) on a tiny trained DiffAE."""

from __future__ import annotations

import importlib.util
import json

import h5py
import matplotlib.image as mpimg
import numpy as np
import pandas as pd
import pytest
import torch

from Engineering.config.loader import resolve
from Engineering.data.latent_tables import prepare
from Engineering.data.transforms import invert_affine
from Engineering.Engines import registry
from Engineering.Engines.MainEngine import run
from Engineering.Engines.MainEngine import run as run_autoencoder
from Engineering.Engines.saved_runs import load_run, whole_file_data
from Engineering.errors import UserError, run_cli
from Engineering.io.checkpoints import read_checkpoint
from tests.conftest import REPO, run_executor, tiny_args

TASK = registry.get("latentcls")
N_PATIENTS, N_FRAMES, DIM = 90, 2, 8
FAST = ["--no-progress_bar", "--no-tbactive", "--batch_size", "16", "--num_epochs", "40", "--lr", "2e-2"]
ID_COLUMNS = ["patientID", "fieldID", "instanceID", "key", "c", "t", "s"]


pytestmark = pytest.mark.usefixtures("one_thread")


def _load(script: str):
    spec = importlib.util.spec_from_file_location(script, REPO / "Executors" / f"{script}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def _latent_table(factors: np.ndarray, pids: list[str], rng) -> pd.DataFrame:
    """Two frames per patient; factor k is planted on latent axis k, the other axes are noise."""
    rows = []
    for p, f in zip(pids, factors):
        for t in range(N_FRAMES):
            z = rng.normal(scale=0.3, size=DIM)
            z[:3] += 2.0 * f
            rows.append([p, "20208", "2", "primary_cine_0", 0, t, 0, *z])
    return pd.DataFrame(rows, columns=ID_COLUMNS + [f"Z{j}" for j in range(DIM)])


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """Latents with planted factors, a phenotype table (linear, random and separable targets) and a fold file."""
    root = tmp_path_factory.mktemp("planted")
    rng = np.random.default_rng(7)
    pids = [str(3000 + i) for i in range(N_PATIENTS)]
    f = rng.normal(size=(N_PATIENTS, 3))
    f[:, 2] = np.sign(f[:, 2]) * (0.5 + np.abs(f[:, 2]))  # a margin: the class is separable along axis 2
    _latent_table(f, pids, rng).to_parquet(root / "emb.parquet", index=False)
    lin = 10 + 3 * f[:, 0] - 2 * f[:, 1] + rng.normal(scale=0.1, size=N_PATIENTS)
    lin[:6] = np.nan  # missing phenotypes: masked, not dropped
    pd.DataFrame(
        {"FID": pids, "lin": lin, "rand": rng.normal(size=N_PATIENTS), "cls": np.where(f[:, 2] > 0, "case", "control")}
    ).to_csv(root / "pheno.tsv", sep="\t", index=False)
    order = [str(p) for p in rng.permutation(pids)]
    folds = {"train": order[:60], "val": order[60:70], "test": order[70:]}
    pd.DataFrame([{k: str(v) for k, v in folds.items()}]).to_csv(root / "folds.csv", index=False)
    return root, folds


def _args(root, save, *extra, latents="emb.parquet"):
    return [
        "--latents",
        str(root / latents),
        "--json§DS_phenotypes§path",
        str(root / "pheno.tsv"),
        "--json§datadir",
        str(root),
        "--json§save_path",
        str(save),
        *FAST,
        *extra,
    ]


def test_planted_targets_on_held_out_patients(planted, tmp_path):
    root, folds = planted
    run(_args(root, tmp_path, "--fulltrainID", "p"), TASK)
    out = tmp_path / "p" / "Output"
    metrics = pd.read_csv(out / "metrics.csv")
    assert list(metrics.columns) == [
        "target",
        "kind",
        "model",
        "split",
        "n",
        "r2",
        "mae",
        "pearson_r",
        "accuracy",
        "balanced_accuracy",
        "auroc_macro",
    ]
    test = metrics[metrics.split == "test"].set_index(["target", "model"])
    for model, least in (("linear", 0.9), ("sklearn_ridge", 0.9), ("mlp", 0.85)):  # 60 training patients
        assert test.loc[("lin", model), "r2"] > least, model
        assert test.loc[("lin", model), "pearson_r"] > 0.95, model
        assert test.loc[("rand", model), "r2"] < 0.15, model  # nothing to find: near 0 or below
    assert abs(test.loc[("rand", "sklearn_ridge"), "r2"]) < 0.2
    for model in ("linear", "mlp", "sklearn_logistic"):
        assert test.loc[("cls", model), "accuracy"] > 0.9, model
        assert test.loc[("cls", model), "balanced_accuracy"] > 0.9, model
        assert test.loc[("cls", model), "auroc_macro"] > 0.97, model
    assert test.loc[("cls", "linear"), "n"] == len(folds["test"]) * N_FRAMES  # every test frame is scored

    preds = pd.read_csv(out / "predictions.tsv", sep="\t", dtype={"patientID": str, "true": str})
    assert list(preds.columns) == ID_COLUMNS + ["target", "split", "model", "true", "prediction", "probability"]
    assert set(preds.loc[preds.split == "test", "patientID"]) == set(folds["test"])
    assert set(preds.loc[preds.split == "train", "patientID"]) == set(folds["train"])
    assert len(preds) == N_PATIENTS * N_FRAMES * 3 * 3  # samples x targets x (linear, mlp, reference)
    cls = preds[(preds.target == "cls") & (preds.model == "linear")]
    assert set(cls.prediction) <= {"case", "control"} and cls.probability.between(0.5, 1).all()
    lin = preds[(preds.target == "lin") & (preds.model == "linear")]
    assert lin.true.isna().sum() == 6 * N_FRAMES and lin.prediction.notna().all()  # missing target: still predicted

    doc = json.loads((out / "metrics.json").read_text())
    assert doc["metrics"]["lin"]["linear"]["test"]["r2"] == pytest.approx(test.loc[("lin", "linear"), "r2"])
    assert doc["targets"]["cls"]["classes"] == ["case", "control"] and doc["targets"]["lin"]["kind"] == "continuous"
    ckpt = read_checkpoint(next((tmp_path / "p" / "Checkpoints").glob("best-*.ckpt")))
    assert [t["name"] for t in ckpt["latentcls_targets"]] == ["lin", "rand", "cls"]
    assert len(ckpt["latentcls_scaler"]["mean"]) == DIM


def test_scalers_are_fitted_on_the_training_split_only(planted, tmp_path):
    root, folds = planted
    table = pd.read_parquet(root / "emb.parquet")
    shifted = table.copy()
    in_test = shifted.patientID.isin(folds["test"])
    shifted.loc[in_test, [f"Z{j}" for j in range(DIM)]] += 100.0  # a test-only shift
    shifted.to_parquet(tmp_path / "shifted.parquet", index=False)
    base = prepare(resolve(_args(root, tmp_path), TASK).cfg)
    moved = prepare(resolve(_args(root, tmp_path, "--latents", str(tmp_path / "shifted.parquet")), TASK).cfg)

    train_rows = table.patientID.isin(folds["train"]).to_numpy()
    Z = table[[f"Z{j}" for j in range(DIM)]].to_numpy()
    np.testing.assert_allclose(base.z_mean, Z[train_rows].mean(0), rtol=1e-5)
    np.testing.assert_array_equal(moved.z_mean, base.z_mean)
    np.testing.assert_array_equal(moved.z_std, base.z_std)
    train = base.rows("train")
    np.testing.assert_array_equal(moved.Z[train], base.Z[train])
    np.testing.assert_allclose(
        moved.Z[~train & moved.rows("test")] - base.Z[~train & base.rows("test")],
        np.broadcast_to(100.0 / base.z_std, (int(in_test.sum()), DIM)),
        rtol=1e-4,
    )
    pheno = pd.read_csv(root / "pheno.tsv", sep="\t", dtype={"FID": str}).set_index("FID")
    lin = next(t for t in base.targets if t.name == "lin")
    assert lin.mean == pytest.approx(pheno.loc[folds["train"], "lin"].mean())  # target scaler: train patients


@pytest.fixture(scope="module")
def bad_inputs(planted, tmp_path_factory):
    root, folds = planted
    d = tmp_path_factory.mktemp("bad")
    table = pd.read_parquet(root / "emb.parquet")
    nan = table.copy()
    nan.loc[5, "Z3"] = np.nan
    nan.to_parquet(d / "nan.parquet", index=False)
    other = table.copy()
    other["patientID"] = "x" + other["patientID"]
    other.to_parquet(d / "other.parquet", index=False)
    table[table.patientID.isin(folds["test"])].to_parquet(d / "test_only.parquet", index=False)
    return d


@pytest.mark.parametrize(
    "case, extra, message",
    [
        ("no_overlap", ["--latents", "{bad}/other.parquet"], "no overlap between latents and labels"),
        ("missing_column", ["--targets", "lin,nope"], "label column(s) nope not found"),
        ("nan_latents", ["--latents", "{bad}/nan.parquet"], "contain NaN or inf (first: patient 3002"),
        ("test_only", ["--latents", "{bad}/test_only.parquet"], "--parent_outfolder Output_fullDS"),
        ("no_latents", ["--latents", ""], "no latents: give --parent_trainID"),
        ("manipulate_unknown", ["--manipulate", "nope"], "--manipulate 'nope' is not a target"),
        ("manipulate_no_model", ["--manipulate", "lin"], "--manipulate needs the DiffAE run behind the latents"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(planted, bad_inputs, tmp_path, capsys, case, extra, message):
    root, _ = planted
    argv = _args(root, tmp_path) + [e.replace("{bad}", str(bad_inputs)) for e in extra]
    assert run_cli(_load("main_latentcls"), argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and message in err, err
    assert not list(tmp_path.glob("*/Output"))  # nothing written


def test_bad_input_through_the_executor(planted, tmp_path):
    root, _ = planted
    proc = run_executor("main_latentcls.py", *_args(root, tmp_path, "--targets", "nope"))
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert "label column(s) nope not found" in proc.stderr


# --- a tiny DiffAE: manipulation and the benchmark's --run ----------------------------------------------------


@pytest.fixture(scope="module")
def diffae_run(tiny_demo, tmp_path_factory):
    """A tiny trained DiffAE with latents of the whole cohort (12 patients x 4 frames)."""
    save = tmp_path_factory.mktemp("dae")
    run_autoencoder(
        tiny_args(tiny_demo, save, "--fulltrainID", "dae", "--run_mode", "3", "--json§foldCSV", "0", "--test_emb_only"),
        registry.get("diffAE"),
    )
    return save


def test_manipulate_renders_strips_and_h5(tiny_demo, diffae_run):
    res = run(
        [
            "--parent_trainID",
            "dae",
            "--json§save_path",
            str(diffae_run),
            "--json§datadir",
            str(tiny_demo),
            "--json§DS_phenotypes§path",
            str(tiny_demo / "phenotypes.tsv"),
            "--targets",
            "cavity_radius,ef_class",
            *FAST,
            "--num_epochs",
            "3",
            "--fulltrainID",
            "lc",
            "--manipulate",
            "cavity_radius",
            "--scales",
            "-2,0,2",
            "--n_manipulate_subs",
            "2",
        ],
        TASK,
    )
    run_dir = diffae_run / "dae" / "ClassifyLatent" / "lc"  # the ancestor's place for a parent's predictors
    assert res["run_dir"] == str(run_dir)
    folder = run_dir / "Output" / "manipulation_cavity_radius"
    strips = sorted(folder.glob("*.png"))
    assert len(strips) == 2
    img = mpimg.imread(strips[0])
    assert img.shape[1] > 2 * img.shape[0]  # a strip: input + 3 renders side by side
    folds = pd.read_csv(tiny_demo / "folds.csv")
    test_ids = set(folds.loc[0, "test"].strip("[]").replace("'", "").replace(" ", "").split(","))
    with h5py.File(folder / "renders.h5") as h5:
        np.testing.assert_array_equal(h5["scales"][()], [-2, 0, 2])
        assert h5["direction"].shape == (8,) and np.linalg.norm(h5["direction"][()]) == pytest.approx(1.0)
        assert h5.attrs["target"] == "cavity_radius"
        assert set(h5) - {"scales", "direction"} <= test_ids and len(set(h5) - {"scales", "direction"}) == 2
        pid = sorted(set(h5) - {"scales", "direction"})[0]
        grp = h5[pid][next(iter(h5[pid]))]
        grp = grp[next(iter(grp))]["primary_cine_0"]
        renders, inp = grp["renders"][()], grp["input"][()]
        where = (pid, *grp.name.split("/")[2:], *(None if grp.attrs[k] < 0 else int(grp.attrs[k]) for k in "cts"))
    assert renders.shape == (3, 1, 32, 32) and inp.shape == (1, 32, 32)
    assert np.isfinite(renders).all() and inp.max() > 100  # original intensity units (int16-scaled demo)
    assert not np.allclose(renders[0], renders[2])  # the direction changes the image
    # scale 0 is the autoencoder's own reconstruction: rendered from the subject's x_T with its own z_sem
    parent = load_run(diffae_run / "dae")
    ds = whole_file_data(parent.cfg).dataset("test")
    i = next(i for i in range(len(ds)) if tuple(ds.describe(i)[k] for k in ID_COLUMNS) == where)
    item = ds.sample(i)
    with torch.no_grad():
        recon = invert_affine(parent.reconstruct(item["inp"][None])[0], item["affine"]).numpy()
    np.testing.assert_allclose(renders[1], recon, rtol=1e-3, atol=1e-3 * np.abs(recon).max())
    np.testing.assert_allclose(inp, invert_affine(item["inp"], item["affine"]).numpy(), rtol=1e-5, atol=1e-2)


def test_benchmark_run_gives_model_metrics(tiny_demo, diffae_run, tmp_path):
    bench = _load("main_benchmark")
    common = [
        "--latents",
        str(diffae_run / "dae"),
        f"copy={diffae_run / 'dae' / 'Output' / 'emb.parquet'}",
        "--labels",
        str(tiny_demo / "phenotypes.tsv"),
        "--label_cols",
        "cavity_radius",
        "--out",
        str(tmp_path / "b"),
        "--n_boot",
        "20",
        "--n_perm",
        "5",
        "--n_splits",
        "2",
        "--n_repeats",
        "1",
        "--run_max_samples",
        "4",
    ]
    with pytest.raises(UserError, match="no --latents run is named 'other'"):
        bench(common + ["--run", f"other={diffae_run / 'dae'}"])
    bench(common + ["--run", str(diffae_run / "dae")])
    metrics = json.loads((tmp_path / "b" / "metrics.json").read_text())
    rot, rec = metrics["dae"]["rotation_sensitivity"], metrics["dae"]["reconstruction_mse"]
    assert 0 < rot["value"] <= 1 and rot["ci_low"] <= rot["value"] <= rot["ci_high"] and rot["n"] == 4
    assert rec["value"] >= 0 and np.isfinite([rec["value"], rec["ci_low"], rec["ci_high"]]).all()
    assert rot["direction"] == rec["direction"] == "lower"
    inv = metrics["dae"]["rotation_invariance"]  # arbitrary angles, over the between-sample spread
    assert inv["value"] > 0 and inv["ci_low"] <= inv["value"] <= inv["ci_high"] and inv["direction"] == "lower"
    skipped = metrics["dae"]["evolution_energy"]["skipped"]  # DiffAE's decoder also needs x_T
    assert "no decoder of a latent alone" in skipped
    eff = metrics["dae"]
    assert eff["parameters_M"]["value"] > 0 and eff["inference_ms_per_sample"]["value"] > 0
    assert eff["inference_ms_per_sample"]["ci_low"] <= eff["inference_ms_per_sample"]["value"]
    assert "rotation_sensitivity" not in metrics["baseline_random"]
    assert metrics["copy"]["reconstruction_mse"]["skipped"] == "no --run model folder for this run"
