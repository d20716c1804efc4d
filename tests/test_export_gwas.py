"""export_gwas on small tables: each option's effect, the inverse normal transform against its formula, PCA/CCA
against scikit-learn fitted on the kept rows, the files plink2/regenie read, and bad input as one line."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from sklearn.cross_decomposition import CCA
from sklearn.decomposition import PCA
from sklearn.linear_model import LinearRegression
from sklearn.preprocessing import StandardScaler

from Engineering.errors import UserError, run_cli
from Engineering.genetics import phenotypes as ph
from Engineering.genetics.export import GwasSettings, build, export
from tests.conftest import REPO

L = 3


def _table(n=40, seed=0, fields=("2", "3"), frames=2, nan_patient=None, latent_dim=L):
    """One row per patient x field x frame; Z = patient effect + field * 10 + frame * 100 (readable by design)."""
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(n, latent_dim))
    rows = []
    for i in range(n):
        for f in fields:
            for t in range(frames):
                z = base[i] + int(f) * 10 + t * 100
                if nan_patient == i and t == 1:
                    z = z.copy()
                    z[0] = np.nan
                rows.append(
                    {
                        "patientID": str(1000 + i),
                        "fieldID": f,
                        "instanceID": "0",
                        "key": "primary",
                        "c": 0,
                        "t": t,
                        "s": 0,
                        **{f"Z{j}": z[j] for j in range(latent_dim)},
                    }
                )
    return pd.DataFrame(rows), base


def _write(df, path):
    df.to_csv(path, sep="\t", index=False)
    return str(path)


def _settings(tmp_path, latents, **kw):
    return GwasSettings(
        latents=latents if isinstance(latents, list) else [latents],
        out=str(tmp_path / "gwas"),
        **{"inverse_normal": False, **kw},
    )


def test_one_row_per_participant_by_field_instance_and_frame(tmp_path):
    df, base = _table()
    f = _write(df, tmp_path / "emb.tsv")
    got = build(_settings(tmp_path, f))["pheno"]
    np.testing.assert_allclose(got[["Z0", "Z1", "Z2"]].to_numpy(), base + 20 + 50, atol=1e-4)  # field 2, mean t
    got = build(_settings(tmp_path, f, field="last", time="1"))["pheno"]
    np.testing.assert_allclose(got[["Z0", "Z1", "Z2"]].to_numpy(), base + 30 + 100, atol=1e-4)
    got = build(_settings(tmp_path, f, field="3", time="0"))["pheno"]
    np.testing.assert_allclose(got[["Z0", "Z1", "Z2"]].to_numpy(), base + 30, atol=1e-4)
    assert list(got.columns) == ["FID", "Z0", "Z1", "Z2"] and (got["FID"] == got.index).all()
    # 'first' is per participant, and IDs order as numbers (10 after 9)
    df2 = df[~((df.patientID == "1000") & (df.fieldID == "2"))].copy()
    df2.loc[df2.fieldID == "3", "fieldID"] = "10"
    df2 = pd.concat([df2, df2[df2.patientID == "1001"].assign(fieldID="9")])
    got = build(_settings(tmp_path, _write(df2, tmp_path / "emb2.tsv")))["pheno"]
    assert got.loc["1000", "Z0"] == pytest.approx(base[0, 0] + 30 + 50, abs=1e-4)  # its only field (now "10")
    assert got.loc["1001", "Z0"] == pytest.approx(base[1, 0] + 20 + 50, abs=1e-4)  # 2 before 9 before 10
    with pytest.raises(UserError, match="--field 7: no latent has fieldID '7'"):
        build(_settings(tmp_path, f, field="7"))
    with pytest.raises(UserError, match="several keys"):
        build(_settings(tmp_path, _write(pd.concat([df, df.assign(key="primary_sag")]), tmp_path / "k.tsv")))


def test_qc_drops_nan_and_outliers_and_counts_each_reason(tmp_path):
    df, base = _table(nan_patient=4)
    df.loc[df.patientID == "1007", "Z1"] += 50  # an outlier in one latent
    built = build(_settings(tmp_path, _write(df, tmp_path / "emb.tsv"), outlier_z=6))
    r = built["report"]
    assert r["n_in"] == 40 and r["n_out"] == 38
    assert r["drops"] == {"NaN latents (not computed)": 1, "outlier (robust |z| > 6 in a latent)": 1}
    assert r["drop_examples"]["NaN latents (not computed)"] == ["1004"]
    assert "1007" not in built["pheno"].index and "1004" not in built["pheno"].index
    assert build(_settings(tmp_path, _write(df, tmp_path / "e2.tsv")))["report"]["n_out"] == 39  # outliers kept


def test_id_map_maps_counts_and_refuses_two_rows(tmp_path):
    df, _ = _table(n=6)
    f = _write(df, tmp_path / "emb.tsv")
    pd.DataFrame(
        {"eid_img": [str(1000 + i) for i in range(5)], "gen": [f"G{i}" for i in range(5)], "fam": ["F"] * 5}
    ).to_csv(tmp_path / "map.tsv", sep="\t", index=False)
    built = build(_settings(tmp_path, f, id_map=str(tmp_path / "map.tsv"), id_map_cols=["eid_img", "gen", "fam"]))
    assert list(built["pheno"].index) == [f"G{i}" for i in range(5)] and set(built["pheno"]["FID"]) == {"F"}
    assert built["report"]["drops"] == {"not in the ID map": 1}
    pd.DataFrame({"eid_img": ["1000", "1001"], "gen": ["G", "G"]}).to_csv(tmp_path / "dup.tsv", sep="\t", index=False)
    with pytest.raises(UserError, match="genetic ID 'G' has latents from two image IDs"):
        build(_settings(tmp_path, f, id_map=str(tmp_path / "dup.tsv"), id_map_cols=["eid_img", "gen"]))
    with pytest.raises(UserError, match="ID map .* has no column 'patientID'"):
        build(_settings(tmp_path, f, id_map=str(tmp_path / "map.tsv")))


def _covariates(tmp_path, n=40, seed=1):
    rng = np.random.default_rng(seed)
    cov = pd.DataFrame(
        {
            "IID": [str(1000 + i) for i in range(n)],
            "age": rng.uniform(40, 70, n),
            "site": rng.choice(["A", "B", "C"], n),
            "sex": rng.integers(0, 2, n),
        }
    )
    cov.to_csv(tmp_path / "cov.tsv", sep="\t", index=False)
    return cov


def test_covariates_one_hot_and_residualisation_match_least_squares(tmp_path):
    df, _ = _table()
    cov = _covariates(tmp_path)
    built = build(
        _settings(
            tmp_path,
            _write(df, tmp_path / "emb.tsv"),
            covariates=str(tmp_path / "cov.tsv"),
            categorical=["sex"],
            residualise=True,
        )
    )
    covar = built["covar"]
    assert list(covar.columns) == ["FID", "age", "site_B", "site_C", "sex_1"]
    np.testing.assert_array_equal(covar["site_B"], (cov["site"] == "B").astype(float))
    raw = build(_settings(tmp_path, str(tmp_path / "emb.tsv")))["pheno"][["Z0", "Z1", "Z2"]].to_numpy()
    x = covar[["age", "site_B", "site_C", "sex_1"]].to_numpy()
    expected = raw - LinearRegression().fit(x, raw).predict(x)
    np.testing.assert_allclose(built["pheno"][["Z0", "Z1", "Z2"]].to_numpy(), expected, atol=1e-6)


def test_bad_covariates_are_one_line(tmp_path):
    df, _ = _table()
    f = _write(df, tmp_path / "emb.tsv")
    cov = _covariates(tmp_path)
    for change, message in (
        (lambda c: c.assign(age=c.age.where(c.index != 3)), "covariate age is missing"),
        (lambda c: c.assign(site="A"), "covariate site has a single level"),
        (lambda c: pd.concat([c, c.iloc[:1]]), "participant '1000' has two rows"),
    ):
        change(cov).to_csv(tmp_path / "bad.tsv", sep="\t", index=False)
        with pytest.raises(UserError, match=message):
            build(_settings(tmp_path, f, covariates=str(tmp_path / "bad.tsv")))
    with pytest.raises(UserError, match="no column 'eid'"):
        build(_settings(tmp_path, f, covariates=str(tmp_path / "cov.tsv"), covar_id_col="eid"))
    with pytest.raises(UserError, match="no column 'bmi'"):
        build(_settings(tmp_path, f, covariates=str(tmp_path / "cov.tsv"), covar_cols=["age", "bmi"]))
    with pytest.raises(UserError, match="--residualise needs --covariates"):
        build(_settings(tmp_path, f, residualise=True))


def test_inverse_normal_transform_is_blom_formula(tmp_path):
    x = np.array([[3.0, 1.0], [1.0, 1.0], [2.0, 5.0], [10.0, 2.0], [-4.0, 7.0]])
    n = len(x)
    for j in range(2):
        # written out: average ranks, then the normal quantile of (r - 3/8) / (n + 1/4)
        ranks = np.array([np.mean([k + 1 for k, v in enumerate(sorted(x[:, j])) if v == value]) for value in x[:, j]])
        expected = stats.norm.ppf((ranks - 0.375) / (n + 0.25))
        np.testing.assert_allclose(ph.inverse_normal(x)[:, j], expected, atol=1e-12)
    df, _ = _table(n=200)
    got = build(_settings(tmp_path, _write(df, tmp_path / "emb.tsv"), inverse_normal=True))
    after = got["report"]["after"]
    assert all(abs(a["mean"]) < 1e-9 and abs(a["skewness"]) < 1e-9 and 0.95 < a["sd"] < 1.0 for a in after.values())


def _two_runs(tmp_path, n=60):
    a, base = _table(n=n, seed=1, fields=("2",), frames=1)
    rng = np.random.default_rng(5)
    b = a.copy()
    mix = rng.normal(size=(L, 4))
    zb = base @ mix + 0.3 * rng.normal(size=(n, 4))
    b = b.drop(columns=[f"Z{j}" for j in range(L)]).assign(**{f"Z{j}": zb[:, j] for j in range(4)})
    b = b[b.patientID != "1003"]  # a participant missing from one view
    return _write(a, tmp_path / "a.tsv"), _write(b, tmp_path / "b.tsv"), a, b


def test_merge_concat_pca_cca_match_scikit_learn_on_the_kept_rows(tmp_path):
    fa, fb, a, b = _two_runs(tmp_path)
    kept = sorted(set(a.patientID) & set(b.patientID))
    xa = a.set_index("patientID").loc[kept, [f"Z{j}" for j in range(L)]].to_numpy(np.float64)
    xb = b.set_index("patientID").loc[kept, [f"Z{j}" for j in range(4)]].to_numpy(np.float64)
    cat = build(_settings(tmp_path, [fa, fb]))
    assert cat["report"]["drops"] == {"not in every run (run 1)": 1}
    assert list(cat["pheno"].columns) == ["FID", *[f"r0_Z{j}" for j in range(L)], *[f"r1_Z{j}" for j in range(4)]]
    np.testing.assert_allclose(cat["pheno"].iloc[:, 1:].to_numpy(), np.hstack([xa, xb]), atol=1e-5)
    pca = build(_settings(tmp_path, [fa, fb], merge="pca", n_components=2))["pheno"]
    ref = PCA(n_components=2, random_state=0).fit_transform(StandardScaler().fit_transform(np.hstack([xa, xb])))
    np.testing.assert_allclose(pca[["PC1", "PC2"]].to_numpy(), ref, atol=1e-4)
    cca = build(_settings(tmp_path, [fa, fb], merge="cca", n_components=2))["pheno"]
    xc, yc = CCA(n_components=2, max_iter=5000).fit(xa, xb).transform(xa, xb)
    np.testing.assert_allclose(cca[["CC1", "CC2"]].to_numpy(), (xc + yc) / 2, atol=1e-4)
    with pytest.raises(UserError, match="--n_components 4: give 1..3 for --merge cca"):
        build(_settings(tmp_path, [fa, fb], merge="cca", n_components=4))
    with pytest.raises(UserError, match="needs the latents of two runs"):
        build(_settings(tmp_path, fa, merge="cca", n_components=2))


def test_files_report_and_cli(tmp_path, capsys):
    df, _ = _table(nan_patient=2)
    f = _write(df, tmp_path / "emb.tsv")
    _covariates(tmp_path)
    spec = importlib.util.spec_from_file_location("export_gwas", REPO / "Executors" / "export_gwas.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "gwas"
    code = run_cli(
        module.main,
        ["--latents", f, "--out", str(out), "--covariates", str(tmp_path / "cov.tsv"), "--covar_cols", "age,site"],
    )
    assert code == 0, capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["covar.tsv", "pheno.tsv", "report.json", "report.md"]
    pheno = pd.read_csv(out / "pheno.tsv", sep="\t", dtype={"FID": str, "IID": str})
    assert list(pheno.columns[:2]) == ["FID", "IID"] and len(pheno) == 39 and not pheno.isna().any().any()
    covar = pd.read_csv(out / "covar.tsv", sep="\t", dtype={"FID": str, "IID": str})
    assert list(covar.columns) == ["FID", "IID", "age", "site_B", "site_C"] and list(covar.IID) == list(pheno.IID)
    report = json.loads((out / "report.json").read_text())
    assert report["format"] == "imlatent-gwas" and report["n_in"] == 40 and report["n_out"] == 39
    assert report["settings"]["inverse_normal"] is True and len(report["inputs"][0]["sha256"]) == 64
    assert "| NaN latents (not computed) | 1 |" in (out / "report.md").read_text()
    # a rerun replaces its own output; a folder of other files, or the latents' folder, is refused
    assert run_cli(module.main, ["--latents", f, "--out", str(out)]) == 0
    assert not (out / "covar.tsv").exists()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    capsys.readouterr()
    assert run_cli(module.main, ["--latents", f, "--out", str(tmp_path / "mine")]) == 2
    assert run_cli(module.main, ["--latents", f, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("error: --out ") for line in err)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"


def test_empty_result_and_bad_latents_write_nothing(tmp_path):
    df, _ = _table(n=2)
    with pytest.raises(UserError, match="2 participants left after QC"):
        export(_settings(tmp_path, _write(df, tmp_path / "emb.tsv")))
    assert not (tmp_path / "gwas").exists()
    with pytest.raises(UserError, match="latents not found"):
        export(_settings(tmp_path, str(tmp_path / "nope.tsv")))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["emb.tsv"]
