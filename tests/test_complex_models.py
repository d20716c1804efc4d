"""The complex-valued autoencoders (complex_ae, complex_vae, complex_factor_vae; issue 36) on complex data kept
complex (--complex_mode complex): the data path (normalisation on the magnitude, crop/pad/flip/resample of complex
arrays), the complex demo cohort, training of each model in 2D and 3D with every logged term checked, the outputs
(real latents, complex recon.h5, metrics of the magnitude) and the refusals (one line, exit code 2).

The default run keeps to the fast checks (~30 s); the end-to-end runs of every model through
Executors/main_recon.py in 2D and 3D are marked slow.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
from conftest import REPO, run_executor

from Engineering.config.loader import resolve
from Engineering.data import transforms as T
from Engineering.data.datamodule import H5DataModule
from Engineering.data.demo import COMPLEX_KEY, SITE_PHASE, ComplexDemoSpec, write_complex_demo
from Engineering.Engines import cli, registry
from Engineering.Engines.WarpDrives.pythaeDrive.network import PythaeDrive, PythaeDriveConfig
from Engineering.Engines.WarpDrives.pythaeDrive.network.custom_models.complex import complex_data_problem
from Engineering.errors import UserError, run_cli

TASK = registry.get("recon")
DATAJSON = str(REPO / "Configs" / "dataNpath_demo_complex.json")
MODELS = ("complex_ae", "complex_vae", "complex_factor_vae")
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def cdemo(tmp_path_factory) -> Path:
    """A tiny complex cohort: 9 patients, 2 frames of 4 slices of 16 x 16."""
    return write_complex_demo(
        tmp_path_factory.mktemp("cdemo") / "demo_complex",
        ComplexDemoSpec(n_patients=9, n_frames=2, n_slices=4, size=16),
    )


def _args(demo, *extra, is3D=False):
    shape = ["--is3D", "--input_shape", "4,16,16"] if is3D else ["--input_shape", "16,16"]
    return [
        "--datajson_path",
        DATAJSON,
        "--json§datadir",
        str(demo),
        "--complex_mode",
        "complex",
        "--norm_type",
        "divbymax",
        *shape,
        "--latent_dim",
        "4",
        "--batch_size",
        "6",
        "--model§pythae§n_features",
        "4",
        "--model§pythae§n_levels",
        "2",
        "--no-progress_bar",
        "--no-tbactive",
        *extra,
    ]


def _cli(capsys, argv) -> tuple[int, str]:
    """main_recon in-process, as Executors/main_recon.py runs it: (exit code, stderr)."""
    code = run_cli(lambda a: cli.main(a, task="recon"), argv)
    return code, capsys.readouterr().err


def _one_line_error(err: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert "Traceback" not in err and lines and lines[-1].startswith("error: "), err
    return lines[-1]


# ----------------------------------------------------------------------------------------------- data path
def test_complex_normalisation_matches_an_independent_computation(cdemo):
    """divbymax divides by the sample's largest magnitude, divbymaxvol by the dataset's max_val (of the magnitude):
    a real positive scale, so every phase is kept; checked against the raw HDF5 values computed here in complex128."""
    for norm in ("divbymax", "divbymaxvol", "none"):
        cfg = resolve(_args(cdemo, "--norm_type", norm), TASK).cfg
        ds = H5DataModule(cfg, merge_train_val=True).dataset("train")
        with h5py.File(cdemo / "data.h5") as h5:
            for i in (0, 5, len(ds) - 1):
                d = ds.describe(i)
                node = h5[f"{d['patientID']}/{d['fieldID']}/{d['instanceID']}/{d['key']}"]
                raw = node[:, d["t"], d["s"]].astype(np.complex128)  # (C, X, Y): the stored slice
                denom = {"divbymax": np.abs(raw).max(), "divbymaxvol": node.attrs["max_val"], "none": 1.0}[norm]
                want = raw / denom
                item = ds[i]
                assert item["inp"].dtype == torch.complex64 and torch.all(item["affine"][:, 1] == 0)
                got = ds.sample(i)["inp"].numpy()
                assert got.dtype == np.complex64
                np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
                # the batch path (DataModule.on_after_batch_transfer) gives the same, and the phase is untouched
                batch = T.normalise_batch(torch.stack([item["inp"]] * 2), torch.stack([item["affine"]] * 2))
                np.testing.assert_allclose(batch[1].numpy(), want, rtol=1e-5, atol=1e-6)
                keep = np.abs(raw) > 0.05
                np.testing.assert_allclose(np.angle(got)[keep], np.angle(raw)[keep], atol=1e-5)
                # and the writer's inverse gives the stored values back
                back = T.invert_affine(batch, torch.stack([item["affine"]] * 2))[0].numpy()
                np.testing.assert_allclose(back, raw, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "extra, match",
    [
        (("--norm_type", "minmax"), "would move the phase"),
        (("--norm_type", "zscore"), "would move the phase"),
        (("--norm_range", "symmetric"), "norm_range symmetric"),
    ],
)
def test_normalisations_that_move_the_phase_are_refused(cdemo, extra, match):
    cfg = resolve(_args(cdemo, *extra), TASK).cfg
    with pytest.raises(UserError, match=match):
        H5DataModule(cfg, merge_train_val=True).dataset("train")[0]


def test_complex_crop_pad_flip_and_resample_keep_complex_values():
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(2, 6, 5)) + 1j * rng.normal(size=(2, 6, 5))).astype(np.complex64)
    out = T.crop_or_pad(x, (4, 8))  # crop X 6 -> 4 (centre), pad Y 5 -> 8 (1 before, 2 after)
    want = np.zeros((2, 4, 8), np.complex64)
    want[:, :, 1:6] = x[:, 1:5]
    np.testing.assert_array_equal(out, want)
    flipped = T.random_flip(x, (0, 1), 1.0, np.random.default_rng(0))
    np.testing.assert_array_equal(flipped, x[:, ::-1, ::-1])
    # resampling is linear: a constant phase stays that phase, and the magnitude is the magnitude's resampling
    mag = np.abs(rng.normal(size=(1, 8, 8))).astype(np.float32) + 0.5
    z = (mag * np.exp(1j * 0.7)).astype(np.complex64)
    r = T.resample(z, 0.5)
    assert r.dtype == np.complex64 and r.shape == (1, 4, 4)
    np.testing.assert_allclose(np.angle(r), 0.7, atol=1e-5)
    np.testing.assert_allclose(np.abs(r), T.resample(mag, 0.5), rtol=1e-5)


def test_a_real_dataset_under_complex_mode_complex_is_refused(tmp_path, tiny_demo):
    cfg = resolve(
        [
            "--json§datadir",
            str(tiny_demo),
            "--json§is_complexDS",
            "true",
            "--complex_mode",
            "complex",
            "--norm_type",
            "divbymax",
            "--input_shape",
            "32,32",
        ],
        TASK,
    ).cfg
    with pytest.raises(UserError, match="is real .* --complex_mode complex keeps complex data complex"):
        H5DataModule(cfg, merge_train_val=True).dataset("train")[0]


def test_complex_demo_phase_carries_flow_and_site(cdemo):
    """The stored phase at the pool's centre is the velocity phase of the cycle plus the site's offset, as the
    phenotype and covariate tables say (computed here from the tables); min/max attributes are the magnitude's."""
    spec = ComplexDemoSpec(n_patients=9, n_frames=2, n_slices=4, size=16)
    pheno = pd.read_csv(cdemo / "phenotypes.tsv", sep="\t", dtype={"FID": str}).set_index("FID")
    cov = pd.read_csv(cdemo / "covariates.tsv", sep="\t", dtype={"FID": str}).set_index("FID")
    n_checked = 0
    with h5py.File(cdemo / "data.h5") as h5:
        for pid in h5:
            ds = h5[f"{pid}/20208/2/{COMPLEX_KEY}"]
            arr = ds[()]
            assert ds.dtype == np.complex64 and arr.shape == (1, 2, 4, 16, 16)
            assert math.isclose(ds.attrs["max_val"], float(np.abs(arr).max()), rel_tol=1e-6)
            assert math.isclose(ds.attrs["min_val"], float(np.abs(arr).min()), rel_tol=1e-6)
            f, site = pheno.loc[pid], cov.loc[pid, "site"]
            cx, cy = spec.size / 2 + f["centre_dx"], spec.size / 2 + f["centre_dy"]
            px, py = int(round(cx)), int(round(cy))
            for t in range(spec.n_frames):
                cycle = 2 * np.pi * t / spec.n_frames + f["phase"]
                ramp = 2 * np.pi * (f["ramp_x"] * (px - cx) + f["ramp_y"] * (py - cy)) / spec.size
                want = ramp + f["flow_phase"] * np.sin(cycle) + SITE_PHASE[site]
                got = np.angle(arr[0, t, 0, py, px])
                assert abs(np.angle(np.exp(1j * (got - want)))) < 0.25, (pid, t, got, want)
                n_checked += 1
    assert n_checked == 18
    assert pheno["flow_phase"].std() > 0.3  # the flow differs between subjects: a phenotype only the phase shows


def test_complex_data_problem_names_both_mismatches():
    assert complex_data_problem("custom_complex_vae", "complex") is None
    assert complex_data_problem("vae", "magnitude") is None
    assert "reads complex data kept complex" in complex_data_problem("complex_ae", "magnitude")
    assert "only the complex models read" in complex_data_problem("beta_vae", "complex")


# ------------------------------------------------------------------------------------------------ training
def _demo_batch(demo, is3D: bool, n: int = 8) -> dict:
    cfg = resolve(_args(demo, is3D=is3D), TASK).cfg
    ds = H5DataModule(cfg, merge_train_val=True).dataset("train")
    idx = np.linspace(0, len(ds) - 1, n).astype(int)
    return {"inp": torch.stack([ds.sample(int(i))["inp"] for i in idx])}


# the terms expected to fall over a few steps on a fixed batch; the others are checked finite (the KL grows from
# ~0 as the encoder starts to carry information; tc_loss and discriminator_loss are the two sides of a game)
FALLING = {
    "complex_ae": ("recon_loss", "loss"),
    "complex_vae": ("recon_loss", "loss"),
    "complex_factor_vae": ("recon_loss", "autoencoder_loss"),
}
LOGGED = {
    "complex_ae": {"loss", "recon_loss"},
    "complex_vae": {"loss", "recon_loss", "reg_loss"},
    "complex_factor_vae": {"loss", "recon_loss", "reg_loss", "tc_loss", "autoencoder_loss", "discriminator_loss"},
}
CRECON = {"complex_ae": "xie", "complex_vae": "mse", "complex_factor_vae": "l1"}  # each kind once


@pytest.mark.parametrize("is3D", [False, True], ids=["2D", "3D"])
@pytest.mark.parametrize("name", MODELS)
def test_each_model_trains_on_the_complex_demo(cdemo, name, is3D):
    torch.manual_seed(0)
    batch = _demo_batch(cdemo, is3D)
    shape = tuple(batch["inp"].shape[2:])
    drive = PythaeDrive(
        PythaeDriveConfig(
            model=f"custom_{name}" if is3D else name,
            is3D=is3D,
            input_shape=shape,
            latent_dim=4,
            n_features=4,
            n_levels=2,
            model_params={"crecon": CRECON[name]},
        )
    )
    opts = [torch.optim.Adam(s.param_groups, lr=3e-3) for s in drive.optimiser_specs()]
    history: dict[str, list[float]] = {}
    for _ in range(16):
        out = drive(batch)
        assert set(out.losses) == LOGGED[name]
        for k, v in out.losses.items():
            assert v.dim() == 0 and torch.isfinite(v), (k, v)
            history.setdefault(k, []).append(v.item())
        for step in drive.losses_for_step(out):
            step.loss.backward(inputs=step.params, retain_graph=step.retain_graph)
        for o in opts:
            o.step()
            o.zero_grad()
    for k in FALLING[name]:
        first, last = np.mean(history[k][:3]), np.mean(history[k][-3:])
        assert last < 0.9 * first, f"{name} {k}: {first:.4g} -> {last:.4g}"
    if name == "complex_factor_vae":  # ADVERSARIAL plan: each loss reaches only its own optimiser's parameters
        out = drive(batch)
        steps = drive.losses_for_step(out)
        assert [s.optimiser for s in steps] == ["autoencoder", "discriminator"]
        for step, other in ((steps[0], "discriminator"), (steps[1], "encoder")):
            drive.zero_grad()
            step.loss.backward(inputs=step.params, retain_graph=True)
            assert all(p.grad is not None for p in step.params)
            assert all(p.grad is None for p in getattr(drive.model, other).parameters())
        drive.zero_grad()
    drive.eval()
    with torch.no_grad():
        z = drive.embed(batch)
        mu = drive.model.encoder(batch["inp"]).embedding
        recon = drive.reconstruct(batch)
    assert z.dtype == torch.float32 and z.shape == (8, 4) and torch.equal(z, mu)  # the posterior mean, real
    assert recon.dtype == torch.complex64 and recon.shape == batch["inp"].shape


def test_vae_loss_is_the_gaussian_likelihood_plus_kl_computed_independently(cdemo):
    batch = _demo_batch(cdemo, False, n=4)
    drive = PythaeDrive(
        PythaeDriveConfig(
            model="complex_vae",
            input_shape=(16, 16),
            latent_dim=4,
            n_features=4,
            n_levels=2,
            model_params={"crecon": "mse"},
        )
    )
    torch.manual_seed(3)
    out = drive(batch)
    x, r = batch["inp"].to(torch.complex128), out.recon.detach().to(torch.complex128)
    recon = 0.5 * ((x - r).abs() ** 2).reshape(4, -1).sum(1).mean()
    enc = drive.model.encoder(batch["inp"])
    mu, lv = enc.embedding.detach().double(), enc.log_covariance.detach().double()
    kl = (0.5 * (mu**2 + lv.exp() - 1 - lv).sum(1)).mean()
    assert math.isclose(out.losses["recon_loss"].item(), float(recon), rel_tol=1e-5)
    assert math.isclose(out.losses["reg_loss"].item(), float(kl), rel_tol=1e-4, abs_tol=1e-6)
    assert math.isclose(out.loss.item(), float(recon + kl), rel_tol=1e-5)


def test_complex_models_run_under_bfloat16_autocast():
    """--ampmode bf16-mixed: the convolutions in bfloat16, the complex values formed in float32 (torch has no
    bfloat16 complex type); every term finite and the gradients reach every parameter."""
    drive = PythaeDrive(
        PythaeDriveConfig(
            model="complex_factor_vae", is3D=True, input_shape=(4, 8, 8), latent_dim=4, n_features=4, n_levels=2
        )
    )
    x = torch.randn(4, 1, 4, 8, 8, dtype=torch.complex64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = drive({"inp": x})
        for step in drive.losses_for_step(out):
            step.loss.backward(inputs=step.params, retain_graph=step.retain_graph)
    assert out.recon.dtype == torch.complex64 and all(torch.isfinite(v) for v in out.losses.values())
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in drive.parameters())


# ---------------------------------------------------------------------------------------------- end to end
def _check_outputs(out: Path, is3D: bool) -> None:
    with h5py.File(out / "emb.h5") as h5:
        embs = []
        h5.visititems(lambda n, o: embs.append(o) if isinstance(o, h5py.Dataset) else None)
        assert embs and all(e.dtype == np.float32 for e in embs)
        assert all(np.isfinite(e[()]).all() for e in embs)
    with h5py.File(out / "recon.h5") as h5:
        names = []
        h5.visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) else None)
        recons = [h5[n] for n in names if n.split("/")[-1].startswith("recon_")]
        assert recons and all(r.dtype == np.complex64 for r in recons)
        assert all(r.shape == ((1, 4, 16, 16) if is3D else (1, 16, 16)) for r in recons)
        inputs = [h5[n] for n in names if n.split("/")[-1].startswith("input_")]
        assert all(i.dtype == np.complex64 and np.abs(np.angle(i[()])).max() > 0.5 for i in inputs)  # phase kept
    metrics = pd.read_csv(out / "metrics.csv")
    assert len(metrics) and np.isfinite(metrics[["SSIM", "PSNR", "NRMSE"]].to_numpy()).all()


def test_main_recon_trains_complex_vae_2d_end_to_end(cdemo, tmp_path):
    """Executors/main_recon.py as users run it, on the complex cohort: real latents, complex recon.h5."""
    proc = run_executor(
        "main_recon.py",
        *_args(
            cdemo,
            "--pythae_model",
            "custom_complex_vae",
            "--json§save_path",
            str(tmp_path),
            "--fulltrainID",
            "cvae",
            "--num_epochs",
            "1",
            "--n_train_batches",
            "3",
            "--n_val_batches",
            "1",
        ),
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    _check_outputs(tmp_path / "cvae" / "Output", is3D=False)


@pytest.mark.slow
@pytest.mark.parametrize("is3D", [False, True], ids=["2D", "3D"])
@pytest.mark.parametrize("name", MODELS)
def test_main_recon_every_complex_model_end_to_end(cdemo, tmp_path, name, is3D):
    """Each model through Executors/main_recon.py for 4 epochs: every logged training term finite in every epoch,
    the terms that should fall lower in the last epoch than in the first, and the outputs of the contract."""
    proc = run_executor(
        "main_recon.py",
        *_args(
            cdemo,
            "--pythae_model",
            name,
            "--json§save_path",
            str(tmp_path),
            "--fulltrainID",
            "run",
            "--num_epochs",
            "4",
            "--lr",
            "3e-3",
            "--n_val_batches",
            "1",
            "--model§pythae§models§" + name + "§crecon",
            CRECON[name],
            is3D=is3D,
        ),
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    logs = pd.read_csv(tmp_path / "run" / "csv_logs" / "metrics.csv")
    epochs = logs.dropna(subset=["train_loss_epoch"]).sort_values("epoch")
    terms = [f"train_{k}_epoch" for k in LOGGED[name]]
    assert set(terms) <= set(epochs.columns), epochs.columns
    assert len(epochs) == 4 and np.isfinite(epochs[terms].to_numpy()).all()
    for k in FALLING[name]:
        first, last = epochs[f"train_{k}_epoch"].iloc[0], epochs[f"train_{k}_epoch"].iloc[-1]
        assert last < first, f"{name} {k}: {first:.4g} -> {last:.4g}"
    _check_outputs(tmp_path / "run" / "Output", is3D)


# ----------------------------------------------------------------------------------------------- refusals
@pytest.mark.parametrize(
    "extra, match",
    [
        (("--pythae_model", "complex_vae", "--model§pythae§nn", "resnet"), "complex convolutions"),
        (("--pythae_model", "complex_ae", "--input_shape", "18,18"), "divisible by 2\\*\\*n_levels"),
        (("--pythae_model", "complex_vae", "--model§pythae§models§complex_vae§crecon", "l2"), "invalid complex_vae"),
        (("--pythae_model", "complex_factor_vae", "--model§pythae§reconstruction_loss", "l1"), "crecon"),
    ],
)
def test_bad_complex_settings_are_one_line(cdemo, tmp_path, capsys, extra, match):
    code, err = _cli(capsys, _args(cdemo, "--json§save_path", str(tmp_path), *extra))
    assert code == 2
    assert re.search(match, _one_line_error(err)), err


def test_complex_model_on_real_data_is_refused_in_one_line(tiny_demo, tmp_path, capsys):
    code, err = _cli(
        capsys,
        [
            "--json§datadir",
            str(tiny_demo),
            "--json§save_path",
            str(tmp_path),
            "--pythae_model",
            "complex_vae",
            "--input_shape",
            "32,32",
            "--latent_dim",
            "4",
            "--batch_size",
            "4",
            "--num_epochs",
            "1",
            "--n_train_batches",
            "1",
            "--model§pythae§n_features",
            "4",
            "--model§pythae§n_levels",
            "2",
            "--no-progress_bar",
            "--no-tbactive",
        ],
    )
    assert code == 2
    assert "complex_vae reads complex data kept complex" in _one_line_error(err)


def test_real_model_on_complex_data_is_refused_in_one_line(cdemo, tmp_path, capsys):
    code, err = _cli(
        capsys,
        _args(
            cdemo,
            "--json§save_path",
            str(tmp_path),
            "--pythae_model",
            "vae",
            "--num_epochs",
            "1",
            "--n_train_batches",
            "1",
        ),
    )
    assert code == 2
    assert "only the complex models read" in _one_line_error(err)


# ------------------------------------------------------------------------------------- magnitude/phase pairs
def _split_pairs(demo: Path, path: Path, lo: float = 0.0, hi: float = 4095.0) -> None:
    """The complex demo stored as a magnitude series and a 12-bit phase series (as a scanner exports them)."""
    with h5py.File(demo / "data.h5") as src, h5py.File(path, "w") as dst:
        for pid in src:
            grp = dst.create_group(f"{pid}/20208/2")
            grp.attrs["aet"] = src[f"{pid}/20208/2"].attrs["aet"]
            z = src[f"{pid}/20208/2/{COMPLEX_KEY}"][()]
            grp.create_dataset("primary_flow_0", data=np.abs(z).astype(np.float32)).attrs["seriesID"] = f"{pid}.m"
            grp.create_dataset(
                "primary_flowP_0", data=np.round((np.angle(z) + np.pi) / (2 * np.pi) * (hi - lo) + lo).astype(np.int16)
            )
            grp.create_dataset("primary_other_0", data=np.ones((1, 1, 1, 4, 4), np.float32))


def test_magphase_pairs_become_the_complex_series(cdemo, tmp_path, capsys):
    from conftest import run_main

    pairs, out = tmp_path / "pairs.h5", tmp_path / "data.h5"
    _split_pairs(cdemo, pairs)
    code = run_main(
        "magphase_to_complex",
        pairs,
        "--magnitude",
        "primary_flow_0",
        "--phase",
        "primary_flowP_0",
        "--phase-range",
        "0,4095",
        "--out",
        out,
    )
    assert code == 0, capsys.readouterr().err
    with h5py.File(cdemo / "data.h5") as want, h5py.File(out) as got:
        assert set(got) == set(want)
        for pid in want:
            z = want[f"{pid}/20208/2/{COMPLEX_KEY}"][()]
            ds = got[f"{pid}/20208/2/primary_flow_0"]
            assert ds.dtype == np.complex64 and set(got[f"{pid}/20208/2"]) == {"primary_flow_0", "primary_other_0"}
            # 12-bit phase: a quantisation step of 2 pi / 4095 rad, so |error| <= |z| * pi / 4095 (plus rounding)
            assert np.all(np.abs(ds[()] - z) <= np.abs(z) * (np.pi / 4095) + 1e-5)
            assert math.isclose(ds.attrs["max_val"], float(np.abs(ds[()]).max()), rel_tol=1e-6)
            assert ds.attrs["seriesID"] == f"{pid}.m" and got[f"{pid}/20208/2"].attrs["aet"]
    # a phase that is not in the stated range is refused; nothing combined: one line, exit 2, no output
    code = run_main(
        "magphase_to_complex",
        pairs,
        "--magnitude",
        "primary_flow_0",
        "--phase",
        "primary_flowP_0",
        "--out",
        tmp_path / "bad.h5",
    )
    err = capsys.readouterr().err
    assert code == 2 and not (tmp_path / "bad.h5").exists()
    assert "outside its range (radians" in err and _one_line_error(err).startswith("error: no primary_flow_0/")


def test_complex_batches_are_refused_by_the_tasks_without_complex_models(capsys):
    from Engineering.Engines import cli
    from Engineering.errors import run_cli

    for task in ("diffAE", "ssl"):
        js = str(Path(__file__).resolve().parents[1] / "Configs" / "dataNpath_demo_complex.json")
        code = run_cli(
            lambda a: cli.main(a, task=task), ["--datajson_path", js, "--complex_mode", "complex", "--print_config"]
        )
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and f"--complex_mode complex is not honoured by task '{task}'" in err[0]
