"""ultra_vae / ultra_factor_vae (the ancestor's confounder-aware VAEs): heads, strategies, tables, outputs."""

from __future__ import annotations

import json
from types import SimpleNamespace

import h5py
import numpy as np
import pandas as pd
import pytest
import torch

from Engineering.data.covariates import Covariates
from Engineering.Engines.WarpDrives.pythaeDrive.network import PythaeDrive, PythaeDriveConfig, get_spec
from Engineering.Engines.WarpDrives.pythaeDrive.network.custom_models.heads import grad_reverse, squared_correlation
from tests.conftest import run_executor

# the ancestor's config_v1.yaml model sections (GlastonburyGroup/ImLatent), key for key
ANCESTOR_SECTIONS = {
    "ultra_vae": {
        "p_do": 0.0,
        "anti_confounders_strategy": 2,
        "n_anti_confounder_layers": 2,
        "lambda_conf_corr_loss": 1.0,
        "learn_phenotypes": True,
        "n_phenotype_layers": 2,
        "lambda_phenotype_loss": 1.0,
    },
    "ultra_factor_vae": {
        "anti_confounders_strategy": 1,
        "n_anti_confounder_layers": 2,
        "lambda_conf_corr_loss": 1.0,
        "learn_phenotypes": True,
        "n_phenotype_layers": 2,
        "lambda_phenotype_loss": 1.0,
    },
}
DATA = dict(
    n_phenotypes=1, phenotype_n_classes=[3], n_confounders_cont=1, n_confounders_bincat=1, confounder_n_classes=[2]
)


def _drive(model: str, shape=(16, 16), is3D=False, **params) -> PythaeDrive:
    torch.manual_seed(0)
    return PythaeDrive(
        PythaeDriveConfig(
            model=model,
            is3D=is3D,
            input_shape=shape,
            latent_dim=4,
            n_levels=2,
            n_features=8,
            model_params={**params, **DATA},
        )
    )


def _planted_batch(n: int, shape, seed: int = 0) -> dict:
    """Images whose brightness is the phenotype and whose left half is brighter at one site (the confounder)."""
    g = torch.Generator().manual_seed(seed)
    pheno = torch.randn(n, 1, generator=g)
    site = torch.randint(0, 2, (n, 1), generator=g)
    x = (
        0.5
        + 0.2 * pheno.view(n, 1, *([1] * len(shape)))
        + 0.05 * (1 + site.view(n, 1, *([1] * len(shape)))) * torch.randn(n, 1, *shape, generator=g)
    )
    x[..., : shape[-1] // 2] += 0.3 * site.view(n, 1, *([1] * len(shape)))
    return {
        "inp": x,
        "phenotypes": pheno,
        "phenotype_classes": (pheno > 0).long() + (pheno > 1).long(),
        "confounders_continuous": site.float() * 2 - 1,
        "confounders_binary": site.float(),
        "confounders_multicat": site,
    }


def test_gradient_reversal_flips_the_sign_of_the_heads_gradient_into_z():
    z = torch.randn(5, 3, requires_grad=True)
    head = torch.nn.Linear(3, 1)
    (head(z) ** 2).sum().backward()
    plain_z, plain_w = z.grad.clone(), head.weight.grad.clone()
    z.grad, head.weight.grad = None, None
    (head(grad_reverse(z, 0.5)) ** 2).sum().backward()
    torch.testing.assert_close(z.grad, -0.5 * plain_z)
    torch.testing.assert_close(head.weight.grad, plain_w)  # the head itself still minimises its loss


def test_correlation_penalty_is_the_mean_squared_pearson_correlation():
    rng = np.random.default_rng(0)
    z, c = rng.normal(size=(40, 3)), rng.normal(size=(40, 2))
    c[3, 1] = np.nan  # a missing value leaves that row out of that column only
    want = []
    for k in range(2):
        keep = ~np.isnan(c[:, k])
        want += [np.corrcoef(z[keep, j], c[keep, k])[0, 1] ** 2 for j in range(3)]
    got = squared_correlation(torch.tensor(z), torch.tensor(c))
    assert abs(float(got) - float(np.mean(want))) < 1e-6


def _train(drive: PythaeDrive, batch: dict, steps: int) -> list[dict]:
    opts = [torch.optim.Adam(s.param_groups, lr=3e-3) for s in drive.optimiser_specs()]
    history = []
    for _ in range(steps):
        out = drive(batch, epoch=0, dataset_size=len(batch["inp"]))
        history.append({k: float(v.detach()) for k, v in out.losses.items()})
        for opt in opts:
            opt.zero_grad()
        for s in drive.losses_for_step(out):
            s.loss.backward(inputs=s.params, retain_graph=s.retain_graph)
        for opt in opts:
            opt.step()
    return history


@pytest.mark.parametrize(
    "model,is3D",
    [
        ("ultra_vae", False),
        ("ultra_factor_vae", False),
        pytest.param("ultra_vae", True, marks=pytest.mark.slow),
        pytest.param("ultra_factor_vae", True, marks=pytest.mark.slow),
    ],
)
def test_each_term_is_finite_and_the_learned_ones_fall(model, is3D):
    shape = (4, 8, 8) if is3D else (16, 16)
    drive = _drive(model, shape, is3D, learn_phenotypes=True, anti_confounders_strategy=1, lambda_pheno_loss=10.0)
    history = _train(drive, _planted_batch(16, shape), 60)
    terms = set(history[0])
    assert {"recon_loss", "pheno_loss", "conf_adv_loss"} <= terms
    assert all(np.isfinite(v) for h in history for v in h.values())
    first = {k: np.mean([h[k] for h in history[:10]]) for k in terms}
    last = {k: np.mean([h[k] for h in history[-10:]]) for k in terms}
    # the reconstruction and the phenotype head learn; the adversary's term is a game (it need not fall)
    assert last["recon_loss"] < first["recon_loss"] and last["pheno_loss"] < first["pheno_loss"], (first, last)


def test_the_correlation_penalty_decorrelates_the_latent_from_the_confounder():
    batch = _planted_batch(32, (16, 16), seed=3)
    conf = batch["confounders_continuous"]
    corr = {}
    for strategy in (0, 2):
        drive = _drive(
            "ultra_vae",
            anti_confounders_strategy=strategy,
            lambda_conf_corr_loss=50.0,
            **({} if strategy else {"learn_phenotypes": True}),
        )
        history = _train(drive, batch, 60)
        assert all(np.isfinite(v) for h in history for v in h.values())
        with torch.no_grad():
            corr[strategy] = float(squared_correlation(drive.eval().embed(batch["inp"]), conf))
    assert corr[2] < 0.5 * corr[0], corr


def test_the_loss_is_the_weighted_sum_of_its_terms():
    drive = _drive(
        "ultra_vae",
        learn_phenotypes=True,
        anti_confounders_strategy=2,
        lambda_pheno_loss=3.0,
        lambda_conf_corr_loss=5.0,
    )
    torch.manual_seed(1)
    out = drive(_planted_batch(8, (16, 16)))
    L = out.losses
    assert (
        abs(float(L["loss"]) - float(L["recon_loss"] + L["reg_loss"] + 3 * L["pheno_loss"] + 5 * L["conf_corr_loss"]))
        < 1e-3
    )


def test_ancestor_sections_build_and_the_ancestor_spelling_selects_the_models():
    assert (
        get_spec("custom_ultra_vae").name == "ultra_vae"
        and get_spec("CUSTOM_ultra_factor_vae").name == "ultra_factor_vae"
    )
    for model, section in ANCESTOR_SECTIONS.items():
        drive = _drive(model, **section)
        heads = drive.model.covariate_heads
        assert heads.phenotype_head is not None and heads.strategy == section["anti_confounders_strategy"]


def _table_cfg(tmp_path, fold: bool):
    table = pd.DataFrame(
        {
            "FID": [f"p{i}" for i in range(6)],
            "age": [10, 20, 30, 40, 1000, np.nan],
            "sex": ["F", "M", "F", "M", "F", "M"],
            "site": ["a", "b", "c", "a", "z", "b"],
        }
    )
    table.to_csv(tmp_path / "t.tsv", sep="\t", index=False)
    folds = tmp_path / "folds.csv"
    pd.DataFrame({"train": [str(["p0", "p1", "p2", "p3"])], "val": [str(["p5"])], "test": [str(["p4"])]}).to_csv(
        folds, index=False
    )
    paths = SimpleNamespace(
        datadir=str(tmp_path),
        foldCSV=str(folds) if fold else "",
        DS_phenotypes={"path": str(tmp_path / "t.tsv"), "cols": ["age", "sex"]},
        DS_confounders={
            "path": str(tmp_path / "t.tsv"),
            "cols": ["age"],
            "bincat_cols": ["sex"],
            "mulcat_cols": ["site"],
        },
    )
    return SimpleNamespace(paths=paths, run=SimpleNamespace(foldID=0))


def test_tables_are_fitted_on_the_training_split_only(tmp_path):
    cov = Covariates.fit(_table_cfg(tmp_path, fold=True), True, True, "test")
    ages = np.array([10, 20, 30, 40.0])
    assert cov.pheno_cont[0].mean == pytest.approx(ages.mean()) and cov.pheno_cont[0].std == pytest.approx(
        ages.std(ddof=1)
    )  # p4's 1000 is a test patient: not in the statistics
    assert cov.conf_multi[0].classes == ["a", "b", "c"]  # "z" is seen only in test
    rows = cov.encode(["p4", "p5", "unknown"])
    assert rows["confounders_multicat"][0, 0] == -1 and np.isnan(rows["phenotypes"][1, 0])
    assert np.isnan(rows["phenotypes"][2]).all() and rows["phenotype_classes"][2, 0] == -1
    assert rows["aux_u"].shape == (3, 1 + 1 + 3) and np.isfinite(rows["aux_u"]).all()
    assert cov.data_params() == {
        "n_phenotypes": 1,
        "phenotype_n_classes": [2],
        "n_confounders_cont": 1,
        "n_confounders_bincat": 1,
        "confounder_n_classes": [3],
        "n_aux": 5,
    }
    whole = Covariates.fit(_table_cfg(tmp_path, fold=False), True, False, "test")
    assert whole.pheno_cont[0].mean == pytest.approx(np.array([10, 20, 30, 40, 1000.0]).mean())


def test_main_recon_trains_ultra_vae_and_writes_pheno_and_conf_predictions(tiny_demo, tmp_path):
    args = [
        "main_recon.py",
        "--pythae_model",
        "custom_ultra_vae",
        "--json§datadir",
        str(tiny_demo),
        "--json§save_path",
        str(tmp_path),
        "--input_shape",
        "32,32",
        "--latent_dim",
        "4",
        "--batch_size",
        "8",
        "--num_epochs",
        "2",
        "--n_train_batches",
        "3",
        "--n_val_batches",
        "1",
        "--no-progress_bar",
        "--no-tbactive",
        "--model§pythae§models§ultra_vae§learn_phenotypes",
        "true",
        "--model§pythae§models§ultra_vae§anti_confounders_strategy",
        "1",
        "--json§DS_phenotypes§path",
        str(tiny_demo / "phenotypes.tsv"),
        "--json§DS_phenotypes§cols",
        '["cavity_radius", "ef_class"]',
        "--json§DS_confounders§path",
        str(tiny_demo / "covariates.tsv"),
        "--json§DS_confounders§cols",
        '["gain"]',
        "--json§DS_confounders§mulcat_cols",
        '["site"]',
        "--fulltrainID",
        "u",
    ]
    proc = run_executor(*args)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = tmp_path / "u" / "Output"
    # a test-only run on the whole file (another "fold") decodes with the training split's statistics, which the
    # checkpoint carries: the same predictions for the same patients
    proc = run_executor(*args, "--resume", "--run_mode", "2", "--json§foldCSV", "0", "--output_suffix", "all")
    assert proc.returncode == 0, proc.stderr[-2000:]
    with h5py.File(out / "pheno_pred.h5") as a, h5py.File(tmp_path / "u" / "Output_all" / "pheno_pred.h5") as b:
        names: list[str] = []
        a.visit(names.append)
        same = [n for n in names if isinstance(a[n], h5py.Dataset)]
        assert same and all(np.allclose(a[n][()], b[n][()], atol=1e-5, equal_nan=True) for n in same)
    metrics = pd.read_csv(tmp_path / "u" / "csv_logs" / "metrics.csv")
    for term in (
        "train_recon_loss_epoch",
        "train_reg_loss_epoch",
        "train_pheno_loss_epoch",
        "train_conf_adv_loss_epoch",
        "val_pheno_loss",
        "val_conf_adv_loss",
    ):
        cols = [c for c in metrics.columns if c == term or c == term.replace("_epoch", "")]
        assert cols and np.isfinite(metrics[cols[0]].dropna()).all() and metrics[cols[0]].notna().any(), term
    with (
        h5py.File(out / "emb.h5") as emb,
        h5py.File(out / "pheno_pred.h5") as ph,
        h5py.File(out / "conf_pred.h5") as cf,
    ):
        assert json.loads(ph.attrs["columns"]) == ["cavity_radius", "ef_class"]
        assert json.loads(cf.attrs["columns"]) == ["gain", "site"]
        assert json.loads(cf.attrs["classes"])["site"] == ["siteA", "siteB", "siteC"]
        n = 0

        def check(name, obj):
            nonlocal n
            if isinstance(obj, h5py.Dataset):
                n += 1
                assert ph[name].shape == obj.shape[:-1] + (2,) and cf[name].shape == obj.shape[:-1] + (2,)
                done = np.isfinite(obj[()]).all(-1)
                assert np.isfinite(ph[name][()][done]).all() and set(np.unique(cf[name][()][done][:, 1])) <= {0, 1, 2}

        emb.visititems(check)
        assert n > 0


def test_phenotypes_without_columns_and_data_fixed_fields_are_refused(tiny_demo, tmp_path, capsys):
    from Engineering.Engines import cli
    from Engineering.errors import run_cli

    base = [
        "--pythae_model",
        "ultra_vae",
        "--json§datadir",
        str(tiny_demo),
        "--json§save_path",
        str(tmp_path),
        "--input_shape",
        "32,32",
        "--num_epochs",
        "1",
        "--no-progress_bar",
        "--model§pythae§models§ultra_vae§learn_phenotypes",
        "true",
    ]
    for extra, message in (
        ([], "learns phenotypes: set json§DS_phenotypes"),
        (
            ["--json§DS_phenotypes§cols", '["cavity_radius"]', "--model§pythae§models§ultra_vae§n_phenotypes", "3"],
            "n_phenotypes is set from the data",
        ),
        # the demo JSON's table is the bundled cohort's: other data would get its values
        (
            ["--json§DS_phenotypes§cols", '["cavity_radius"]'],
            "json§DS_phenotypes§path @demo/phenotypes.tsv is the bundled @demo cohort's table",
        ),
    ):
        code = run_cli(lambda a: cli.main(a, task="recon"), base + extra)
        errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error")]
        assert code == 2 and len(errors) == 1 and message in errors[0], errors


TABLES = {  # what each model reads, from the tiny demo's tables
    "ultra_vae": [
        "--model§pythae§models§ultra_vae§learn_phenotypes",
        "true",
        "--model§pythae§models§ultra_vae§anti_confounders_strategy",
        "1",
    ],
    "ultra_factor_vae": [
        "--model§pythae§models§ultra_factor_vae§learn_phenotypes",
        "true",
        "--model§pythae§models§ultra_factor_vae§anti_confounders_strategy",
        "2",
    ],
    "ultra_cevae": [
        "--model§pythae§models§ultra_cevae§learn_phenotypes",
        "true",
        "--model§pythae§models§ultra_cevae§anti_confounders_strategy",
        "1",
        "--anomaly_map",
        "combi",
    ],
    "ivaes": ["--model§pythae§models§ivaes§M", "4"],
}
REDUCE_3D = ["--is3D", "--input_shape", "4,32,32", "--json§DS_slice_dim", "1", "--json§DS_split_time", "false"]


@pytest.mark.parametrize(
    "model,is3D",
    [("ultra_cevae", False)]  # (ultra_vae, ultra_factor_vae 2D: the prediction
    # and ancestor-YAML tests run them through main_recon; ivaes 2D/3D: test_ivae_cevae's drive runs)
    + [pytest.param(m, False, marks=pytest.mark.slow) for m in ("ultra_factor_vae", "ivaes")]
    + [
        pytest.param(m, True, marks=pytest.mark.slow) for m in ["ultra_vae", "ultra_factor_vae", "ultra_cevae", "ivaes"]
    ],
)
def test_each_ancestor_model_trains_on_the_demo_through_main_recon(tiny_demo, tmp_path, model, is3D):
    flags = TABLES[model]
    reads_pheno = any("learn_phenotypes" in f for f in flags)
    args = [
        "main_recon.py",
        "--pythae_model",
        f"custom_{model}",
        "--json§datadir",
        str(tiny_demo),
        "--json§save_path",
        str(tmp_path),
        "--latent_dim",
        "4",
        "--batch_size",
        "8",
        "--num_epochs",
        "3",
        "--n_train_batches",
        "4",
        "--n_val_batches",
        "1",
        "--no-progress_bar",
        "--no-tbactive",
        "--json§DS_confounders§path",
        str(tiny_demo / "covariates.tsv"),
        "--json§DS_confounders§cols",
        '["gain"]',
        "--json§DS_confounders§mulcat_cols",
        '["site"]',
        *(
            [
                "--json§DS_phenotypes§path",
                str(tiny_demo / "phenotypes.tsv"),
                "--json§DS_phenotypes§cols",
                '["cavity_radius"]',
            ]
            if reads_pheno
            else []
        ),
        *(REDUCE_3D if is3D else ["--input_shape", "32,32"]),
        *flags,
        "--fulltrainID",
        "m",
    ]
    proc = run_executor(*args)
    assert proc.returncode == 0, proc.stderr[-2000:]
    metrics = pd.read_csv(tmp_path / "m" / "csv_logs" / "metrics.csv")
    terms = [c for c in metrics.columns if c.startswith("train_") and c.endswith("loss_epoch")]
    assert "train_recon_loss_epoch" in terms and len(terms) >= 3, terms
    per_epoch = metrics.dropna(subset=["train_recon_loss_epoch"])
    for term in terms:  # every logged term finite at every epoch
        assert np.isfinite(per_epoch[term]).all(), (term, per_epoch[term].tolist())
    recon = per_epoch["train_recon_loss_epoch"].to_numpy()
    assert recon[-1] < recon[0], recon  # the reconstruction learns
    assert (tmp_path / "m" / "Output" / "emb.h5").is_file()
    if model == "ultra_cevae":  # --anomaly_map: a map beside each reconstruction in recon.h5
        with h5py.File(tmp_path / "m" / "Output" / "recon.h5") as h5:
            names: list[str] = []
            h5.visit(names.append)
            maps = [n for n in names if n.rsplit("/", 1)[-1].startswith("anomaly_")]
            assert maps and len(maps) == len([n for n in names if n.rsplit("/", 1)[-1].startswith("recon_")])
            for name in maps:
                a = h5[name][()]
                assert (
                    a.shape == h5[name.replace("anomaly_", "recon_")].shape and np.isfinite(a).all() and (a >= 0).all()
                )


def test_anomaly_map_is_refused_for_a_model_without_one(capsys):
    from Engineering.Engines import cli
    from Engineering.errors import run_cli

    code = run_cli(lambda a: cli.main(a, task="recon"), ["--anomaly_map", "combi", "--print_config"])
    err = capsys.readouterr().err
    assert code == 2 and "--anomaly_map is not honoured by task 'recon': it needs a model with an anomaly map" in err


ANCESTOR_YAML = """\
# the ancestor's config_v1.yaml layout: its keys and values for these models (written for the test)
seed: 1701
model:
  latent_dim: 4
  pythae:
    n_features: 8
    nn: "convnet"
    reconstruction_loss: "l1"
    models:
      ultra_factor_vae:
        anti_confounders_strategy: 1
        n_anti_confounder_layers: 2
        lambda_conf_corr_loss: 1.0
        learn_phenotypes: true
        n_phenotype_layers: 2
        lambda_phenotype_loss: 1.0
      ultra_vae:
        p_do: 0.0
        anti_confounders_strategy: 2
        n_anti_confounder_layers: 2
        lambda_conf_corr_loss: 1.0
        learn_phenotypes: true
        n_phenotype_layers: 2
        lambda_phenotype_loss: 1.0
data:
  dataset:
    data_mask_mode: 0
    fetch_confounders: true
    fetch_phenotypes: true
  complex_mode: 1
"""


@pytest.mark.parametrize("model", [pytest.param("ultra_vae", marks=pytest.mark.slow), "ultra_factor_vae"])
def test_the_ancestors_yaml_and_json_tables_drive_the_models_unchanged(tiny_demo, tmp_path, model):
    (tmp_path / "config_v1.yaml").write_text(ANCESTOR_YAML)
    cov = pd.read_csv(tiny_demo / "covariates.tsv", sep="\t", dtype={"FID": str})
    cov["new_coil"] = (cov["FID"].astype(int) % 2).astype(int)  # a binary confounder
    cov.to_csv(tmp_path / "confounders.tsv", sep="\t", index=False)
    data = {
        "datadir": str(tiny_demo),
        "datafile": "data.h5",
        "foldCSV": "folds.csv",
        "save_path": str(tmp_path),
        "DS_selected_primaries": ["primary_cine"],
        "DS_every_primary": False,
        "DS_include_repeatAcq": True,
        "DS_phenotypes": {"path": str(tiny_demo / "phenotypes.tsv"), "cols": ["cavity_radius", "ef_class"]},
        "DS_confounders": {
            "path": str(tmp_path / "confounders.tsv"),
            "cols": ["gain"],
            "bincat_cols": ["new_coil"],
            "mulcat_cols": ["site"],
        },
    }
    (tmp_path / "dataNpath.json").write_text(json.dumps(data))
    proc = run_executor(
        "main_recon.py",
        "--configyml_path",
        str(tmp_path / "config_v1.yaml"),
        "--datajson_path",
        str(tmp_path / "dataNpath.json"),
        "--pythae_model",
        f"custom_{model}",
        "--input_shape",
        "32,32",
        "--batch_size",
        "8",
        "--num_epochs",
        "1",
        "--n_train_batches",
        "2",
        "--n_val_batches",
        "1",
        "--no-progress_bar",
        "--no-tbactive",
        "--fulltrainID",
        "a",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    metrics = pd.read_csv(tmp_path / "a" / "csv_logs" / "metrics.csv")
    adv = "conf_adv_loss" if model == "ultra_factor_vae" else "conf_corr_loss"
    for term in ("train_pheno_loss_epoch", f"train_{adv}_epoch", "train_recon_loss_epoch"):
        assert term in metrics and np.isfinite(metrics[term].dropna()).all() and metrics[term].notna().any(), term
    with h5py.File(tmp_path / "a" / "Output" / "pheno_pred.h5") as h5:
        assert json.loads(h5.attrs["columns"]) == ["cavity_radius", "ef_class"]
    assert (tmp_path / "a" / "Output" / "conf_pred.h5").is_file() == (model == "ultra_factor_vae")
