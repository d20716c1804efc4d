"""Identifiable VAEs (ivaes: iVAE | IDVAE | CI-iVAE) and the context-encoding VAE (ultra_cevae) on the pythae drive.

References are computed here, independently of the models' code: the iVAE ELBO from torch.distributions and the
precision form of a product of Gaussians; the CE-VAE loss as the weighted sum of its logged terms. Tiny shapes,
one torch thread; the whole file runs in seconds.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from Engineering.Engines.WarpDrives.pythaeDrive.network import PythaeDrive, PythaeDriveConfig, PythaeDriveConfigError
from Engineering.Engines.WarpDrives.pythaeDrive.network.custom_models import aux
from Engineering.Engines.WarpDrives.pythaeDrive.network.custom_models.cevae import (
    draw_squares,
    max_square_side,
    square_mask,
)
from Engineering.Engines.WarpDrives.pythaeDrive.network.custom_models.ivae import skew_kls

pytestmark = pytest.mark.usefixtures("one_thread")

N_AUX = 3
SMALL_IVAE = {"n_aux": N_AUX, "hidden_nodes_label_prior": 16}
MODE_PARAMS = {"iVAE": {}, "IDVAE": {"hidden_nodes_label_decoder": 16}, "CI-iVAE": {"M": 16}}

# the ancestor's config_v1.yaml sections (GlastonburyGroup/ImLatent), key for key; max_n_squares sits inside a
# comment there, so it is absent
ANCESTOR_IVAES = {
    "ivae_mode": "CI-iVAE",
    "beta": 0.001,
    "alpha_step": 0.025,
    "hidden_nodes_label_prior": 256,
    "hidden_nodes_label_decoder": 256,
    "M": 100,
    "predict_reparameterised": False,
    "orig_recon_loss": True,
}
ANCESTOR_CEVAE = {
    "ce_factor": 1.0,
    "recon_factor": 1.0,
    "vae_factor": 1.0,
    "square_size_factor": 2,
    "min_n_squares": 1,
    "anti_confounders_strategy": 0,
    "n_anti_confounder_layers": 2,
    "lambda_conf_corr_loss": 1.0,
    "learn_phenotypes": True,
    "n_phenotype_layers": 2,
    "lambda_phenotype_loss": 1.0,
}


def blobs(shape, batch=4, seed=0):
    """Smooth Gaussian blobs in [0, 1] at random centres."""
    g = torch.Generator().manual_seed(seed)
    grid = torch.meshgrid(*[torch.linspace(-1, 1, n) for n in shape], indexing="ij")
    out = []
    for _ in range(batch):
        centre = torch.rand(len(shape), generator=g) - 0.5
        out.append(torch.exp(-sum((a - c) ** 2 for a, c in zip(grid, centre)) / 0.2))
    return torch.stack(out).reshape(batch, 1, *shape)


def make(model, shape=(12, 12), **params):
    torch.manual_seed(0)
    return PythaeDrive(
        PythaeDriveConfig(
            model=model, is3D=len(shape) == 3, input_shape=shape, latent_dim=4, n_features=8, model_params=params
        )
    )


def aux_u(batch=4, seed=1):
    return torch.randn(batch, N_AUX, generator=torch.Generator().manual_seed(seed))


def fix_noise(model, seed=3):
    """Make the model's standard-normal draws come from a fixed generator; returns the list of draws."""
    g, drawn = torch.Generator().manual_seed(seed), []

    def noise(like, *extra):
        eps = torch.randn(*like.shape, *extra, generator=g, dtype=like.dtype)
        drawn.append(eps)
        return eps

    model._noise = noise
    return drawn


def one_line(exc_info) -> str:
    msg = str(exc_info.value)
    assert "\n" not in msg, msg
    return msg


# ----------------------------------------------------------------------------- iVAE: closed form
@pytest.mark.parametrize("orig_recon_loss", [True, False])
def test_ivae_elbo_equals_the_closed_form(orig_recon_loss):
    beta = 0.7
    drive = make("ivaes", ivae_mode="iVAE", beta=beta, orig_recon_loss=orig_recon_loss, **SMALL_IVAE)
    model = drive.model
    x, u = blobs((12, 12)), aux_u()
    drawn = fix_noise(model)
    model.eval()  # no input jitter: the only draw is the posterior sample
    with torch.no_grad():
        out = drive({"inp": x, "aux_u": u})
        (eps,) = drawn
        enc = model.encoder(x)
        m1, v1 = enc.embedding, enc.log_covariance.exp()
        m2, lv2 = model.label_prior.net(u).chunk(2, dim=-1)
        v2 = lv2.exp()
        precision = 1 / v1 + 1 / v2  # q(z|x,u) ∝ q(z|x) p(z|u)
        var = 1 / precision
        mean = var * (m1 / v1 + m2 / v2)
        z = mean + var.sqrt() * eps
        sq = (model.decoder(z)["reconstruction"] - x).pow(2).flatten(1)
        recon = sq.mean(1) if orig_recon_loss else 0.5 * sq.sum(1)
        kl = kl_divergence(Normal(mean, var.sqrt()), Normal(m2, v2.sqrt())).sum(1)
    torch.testing.assert_close(out.losses["recon_loss"], recon.mean(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.losses["reg_loss"], kl.mean(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.loss, (recon + beta * kl).mean(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.z, z)


def test_idvae_adds_the_label_vae_elbo():
    beta = 0.3
    drive = make("ivaes", ivae_mode="IDVAE", beta=beta, **SMALL_IVAE, **MODE_PARAMS["IDVAE"])
    model = drive.model
    x, u = blobs((12, 12)), aux_u()
    drawn = fix_noise(model)
    model.eval()
    with torch.no_grad():
        out = drive({"inp": x, "aux_u": u})
        _, eps_u = drawn
        m2, lv2 = model.label_prior.net(u).chunk(2, dim=-1)
        u_rec = model.label_decoder(m2 + (0.5 * lv2).exp() * eps_u)
        label_recon = (u_rec - u).pow(2).mean(1)
        label_kl = kl_divergence(Normal(m2, (0.5 * lv2).exp()), Normal(0.0, 1.0)).sum(1)  # prior N(0, I)
    L = out.losses
    torch.testing.assert_close(L["label_recon_loss"], label_recon.mean(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(L["label_reg_loss"], label_kl.mean(), rtol=1e-5, atol=1e-6)
    total = L["recon_loss"] + beta * L["reg_loss"] + L["label_recon_loss"] + beta * L["label_reg_loss"]
    torch.testing.assert_close(out.loss, total, rtol=1e-5, atol=1e-6)


def test_ci_ivae_bound_is_at_least_as_tight_as_the_mixture_of_elbos():
    """Per sample, bound(a) = a ELBO_enc + (1-a) ELBO_iVAE + beta * skew KLs >= the convex combination; the loss
    (mean over samples of the best a) is therefore at most the best convex combination of the mean terms."""
    beta = 0.5
    drive = make("ivaes", ivae_mode="CI-iVAE", beta=beta, alpha_step=0.25, **SMALL_IVAE, **MODE_PARAMS["CI-iVAE"])
    fix_noise(drive.model)
    drive.eval()
    with torch.no_grad():
        out = drive({"inp": blobs((12, 12)), "aux_u": aux_u()})
    L = out.losses
    ivae = L["recon_loss"] + beta * L["reg_loss"]
    enc = L["encoder_recon_loss"] + beta * L["encoder_reg_loss"]
    alphas = drive.model.alphas
    torch.testing.assert_close(alphas, torch.tensor([0.25, 0.5, 0.75]))  # inside (0, 1), as the authors' grid
    assert out.loss <= min(a * enc + (1 - a) * ivae for a in alphas.tolist()) + 1e-6
    assert L["skew_kl_loss"] >= 0
    assert 0.25 <= float(out.raw["alpha"]) <= 0.75


def test_ci_ivae_skew_kls_match_quadrature():
    """KL(q1 || a q1 + (1-a) q2) and KL(q2 || a q1 + (1-a) q2) for 1D Gaussians: the Monte-Carlo estimates the
    model uses against trapezoidal quadrature on a fine grid."""
    mu1, lv1, mu2, lv2 = 0.3, math.log(0.5), -1.2, math.log(2.0)
    alphas = torch.tensor([0.0, 0.2, 0.5, 0.9, 1.0], dtype=torch.float64)
    g, m = torch.Generator().manual_seed(0), 400_000
    t = lambda v: torch.tensor([[v]], dtype=torch.float64)  # noqa: E731
    kl_1, kl_2 = skew_kls(
        t(mu1),
        t(lv1),
        t(mu2),
        t(lv2),
        alphas,
        torch.randn(1, 1, m, generator=g, dtype=torch.float64),
        torch.randn(1, 1, m, generator=g, dtype=torch.float64),
    )
    z = torch.linspace(-20, 20, 200_001, dtype=torch.float64)
    q1, q2 = Normal(mu1, math.exp(lv1 / 2)).log_prob(z).exp(), Normal(mu2, math.exp(lv2 / 2)).log_prob(z).exp()
    for k, a in enumerate(alphas.tolist()):
        mix = a * q1 + (1 - a) * q2
        ref_1 = torch.trapezoid(q1 * (q1.clamp_min(1e-300).log() - mix.clamp_min(1e-300).log()), z)
        ref_2 = torch.trapezoid(q2 * (q2.clamp_min(1e-300).log() - mix.clamp_min(1e-300).log()), z)
        assert abs(float(kl_1[0, k] - ref_1)) < 0.01 + 0.01 * float(ref_1), (a, float(kl_1[0, k]), float(ref_1))
        assert abs(float(kl_2[0, k] - ref_2)) < 0.01 + 0.01 * float(ref_2), (a, float(kl_2[0, k]), float(ref_2))
    assert float(kl_1[0, -1]) == 0.0 and float(kl_2[0, 0]) == 0.0  # a component against itself


def test_embed_is_the_posterior_mean_of_q_z_given_x():
    drive = make("ivaes", **SMALL_IVAE)
    x = blobs((12, 12))
    drive.eval()
    with torch.no_grad():
        torch.testing.assert_close(drive.embed(x), drive.model.encoder(x).embedding)
        assert drive.reconstruct(x).shape == x.shape


# ----------------------------------------------------------------------------- CE-VAE: loss, squares, map
def test_cevae_loss_is_the_weighted_sum_of_its_terms():
    x = blobs((12, 12))
    base = {"ce_factor": 1.0, "recon_factor": 1.0, "vae_factor": 1.0}
    runs = {}
    for name, value in [(None, None), ("ce_factor", 0.5), ("recon_factor", 2.5), ("vae_factor", 0.0)]:
        params = dict(base, **({name: value} if name else {}))
        drive = make("ultra_cevae", **params)
        torch.manual_seed(7)  # same squares and samples for every setting
        out = drive({"inp": x})
        L = {k: float(v.detach()) for k, v in out.losses.items()}
        want = (
            params["vae_factor"] * L["reg_loss"]
            + params["recon_factor"] * L["recon_loss"]
            + params["ce_factor"] * L["ce_recon_loss"]
        )
        assert math.isclose(L["loss"], want, rel_tol=1e-6)
        runs[name] = L
    for name, value, term in [
        ("ce_factor", 0.5, "ce_recon_loss"),
        ("recon_factor", 2.5, "recon_loss"),
        ("vae_factor", 0.0, "reg_loss"),
    ]:
        for key in ("reg_loss", "recon_loss", "ce_recon_loss"):  # the terms do not depend on the factors
            assert math.isclose(runs[name][key], runs[None][key], rel_tol=1e-6)
        assert math.isclose(
            runs[name]["loss"] - runs[None]["loss"], (value - 1.0) * runs[None][term], rel_tol=1e-5, abs_tol=1e-4
        )


@pytest.mark.parametrize(
    "spatial,factor,min_n,max_n",
    [((12, 12), 2, 1, 3), ((16, 20), 4, 0, 2), ((4, 12, 12), 2, 2, 2), ((8, 8, 8), 1.5, 0, 4)],
)
def test_squares_respect_counts_and_size_factor(spatial, factor, min_n, max_n):
    g = torch.Generator().manual_seed(0)
    max_side = max_square_side(spatial, factor)
    assert max_side == max(1, int(min(spatial) // factor))
    boxes = draw_squares(300, spatial, min_n, max_n, max_side, g)
    counts = [len(b) for b in boxes]
    assert min(counts) == min_n and max(counts) == max_n  # both ends of the inclusive range occur
    sides = [side for b in boxes for _, side in b]
    assert min(sides) == 1 and max(sides) == max_side
    for b in boxes:
        for start, side in b:
            assert len(start) == len(spatial)  # a cube in 3D: one side for every axis
            assert all(0 <= s and s + side <= n for s, n in zip(start, spatial))
    x = torch.zeros((len(boxes[:8]), 2) + tuple(spatial))
    mask, fill = square_mask(x, boxes[:8], -1.0, 2.0, g)
    for i, b in enumerate(boxes[:8]):
        expected = torch.zeros(spatial, dtype=torch.bool)
        for start, side in b:
            expected[tuple(slice(s, s + side) for s in start)] = True
        assert torch.equal(mask[i, 0], expected)
    assert fill[mask].min() >= -1.0 and fill[mask].max() <= 2.0


def test_masked_input_keeps_x_outside_the_squares():
    drive = make("ultra_cevae", min_n_squares=2, max_n_squares=2)
    x = blobs((12, 12))
    masked, mask = drive.model.mask_input(x, torch.Generator().manual_seed(1))
    assert mask.shape == (4, 1, 12, 12) and mask.any(dim=(1, 2, 3)).all()
    assert torch.equal(masked[~mask.expand_as(x)], x[~mask.expand_as(x)])
    assert masked[mask.expand_as(x)].min() >= x.min() and masked[mask.expand_as(x)].max() <= x.max()


@pytest.fixture(scope="module")
def trained_cevae():
    drive = make("ultra_cevae", (16, 16), min_n_squares=0, max_n_squares=1)
    train(drive, {"inp": blobs((16, 16), batch=8)}, steps=30)
    return drive.eval()


@pytest.mark.parametrize("score,factor", [("combi", 5), ("grad", 2), ("rec", 5)])  # seen: >= 11, 5, 15
def test_anomaly_map_shape_and_planted_anomaly(trained_cevae, score, factor):
    test = blobs((16, 16), batch=2, seed=5)
    planted = test.clone()
    planted[:, :, 3:7, 9:13] = 1.5  # a bright square that none of the training images has
    with torch.inference_mode():  # the map takes its own gradient, also under inference mode
        amap = trained_cevae.model.anomaly_map(planted, score=score)
    assert amap.shape == planted.shape and torch.isfinite(amap).all() and (amap >= 0).all()
    inside = torch.zeros_like(planted, dtype=torch.bool)
    inside[:, :, 3:7, 9:13] = True
    for i in range(2):
        a, m = amap[i], inside[i]
        assert a[m].mean() > factor * a[~m].mean(), (a[m].mean(), a[~m].mean())


def test_anomaly_map_is_the_product_of_squared_error_and_kl_gradient(trained_cevae):
    """'combi' recomputed here: (x - decode(mu))^2 * |d KL(N(mu, var) || N(0, I)) / dx|."""
    model = trained_cevae.model
    x = blobs((16, 16), batch=2, seed=6).requires_grad_(True)
    enc = model.encoder(x)
    kl = kl_divergence(Normal(enc.embedding, (0.5 * enc.log_covariance).exp()), Normal(0.0, 1.0)).sum()
    (grad,) = torch.autograd.grad(kl, x)
    with torch.no_grad():
        want = (x - model.decoder(enc.embedding)["reconstruction"]).pow(2) * grad.abs()
    torch.testing.assert_close(model.anomaly_map(x.detach()), want, rtol=1e-4, atol=1e-8)
    with pytest.raises(PythaeDriveConfigError, match="anomaly score must be one of combi, grad, rec"):
        model.anomaly_map(x.detach(), score="kl")


def test_anomaly_map_3d_shape():
    drive = make("ultra_cevae", (4, 8, 8))
    drive.eval()
    x = blobs((4, 8, 8), batch=2)
    with torch.no_grad():
        amap = drive.model.anomaly_map(x)
    assert amap.shape == x.shape and torch.isfinite(amap).all()


# ----------------------------------------------------------------------------- training through the drive
def train(drive, batch, steps, lr=2e-3):
    """Adam on the drive's single optimiser; returns every logged loss term per step."""
    (spec,) = drive.optimiser_specs()
    opt = torch.optim.Adam(spec.param_groups, lr=lr)
    terms: dict = {}
    drive.train()
    for step in range(steps):
        out = drive(batch, epoch=step, dataset_size=batch["inp"].shape[0])
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        for name, value in out.losses.items():
            terms.setdefault(name, []).append(float(value.detach()))
    return terms


def check_terms(terms, falling, k=5):
    for name, history in terms.items():
        assert all(math.isfinite(v) for v in history), f"{name} not finite: {history}"
    for name in falling:
        first, last = sum(terms[name][:k]) / k, sum(terms[name][-k:]) / k
        assert last < first, f"{name} did not fall: {terms[name]}"


IVAE_FALLING = {
    "iVAE": ["recon_loss"],
    "IDVAE": ["recon_loss", "label_recon_loss"],
    "CI-iVAE": ["recon_loss", "encoder_recon_loss"],
}


def _train_ivae(mode, shape, steps):
    drive = make("ivaes", shape, ivae_mode=mode, **SMALL_IVAE, **MODE_PARAMS[mode])
    batch = {"inp": blobs(shape), "aux_u": aux_u()}
    terms = train(drive, batch, steps)
    assert set(terms) >= {"loss", "recon_loss", "reg_loss"}
    check_terms(terms, IVAE_FALLING[mode])
    drive.eval()
    with torch.no_grad():
        assert drive.embed(batch["inp"]).shape == (4, 4)


@pytest.mark.parametrize("mode", ["iVAE", "IDVAE", "CI-iVAE"])
@pytest.mark.parametrize("shape", [(12, 12), (4, 12, 12)])
def test_every_ivae_mode_trains_2d_and_3d(mode, shape):
    _train_ivae(mode, shape, steps=25)


@pytest.mark.parametrize("shape", [(12, 12), (4, 12, 12)])
def test_cevae_trains(shape):
    drive = make("ultra_cevae", shape)
    terms = train(drive, {"inp": blobs(shape)}, steps=20)
    assert set(terms) == {"loss", "recon_loss", "reg_loss", "ce_recon_loss"}
    check_terms(terms, ["recon_loss", "ce_recon_loss"])


def test_cevae_with_phenotype_head_and_correlation_penalty_trains():
    """The ancestor's ultra_* keys act on ultra_cevae (custom_models/heads.py): their terms are logged and added."""
    drive = make(
        "ultra_cevae",
        learn_phenotypes=True,
        n_phenotypes=1,
        anti_confounders_strategy=2,
        n_confounders_cont=1,
        lambda_conf_corr_loss=0.5,
    )
    x = blobs((12, 12))
    batch = {
        "inp": x,
        aux.PHENOTYPES: x.flatten(1).mean(1, keepdim=True) * 10,
        aux.CONF_CONT: torch.randn(4, 1, generator=torch.Generator().manual_seed(2)),
    }
    torch.manual_seed(7)
    out = drive(batch)
    L = {k: float(v.detach()) for k, v in out.losses.items()}
    want = L["reg_loss"] + L["recon_loss"] + L["ce_recon_loss"] + L["pheno_loss"] + 0.5 * L["conf_corr_loss"]
    assert math.isclose(L["loss"], want, rel_tol=1e-6)
    terms = train(drive, batch, steps=20)
    check_terms(terms, ["recon_loss", "pheno_loss"])


# ----------------------------------------------------------------------------- configuration
def test_the_ancestor_config_sections_drive_the_models_unchanged():
    drive = make("custom_ivaes", **ANCESTOR_IVAES, n_aux=N_AUX)  # n_aux: filled by the engine from the data
    out = drive({"inp": blobs((12, 12)), "aux_u": aux_u()})
    assert drive.model.model_config.ivae_mode == "CI-iVAE" and drive.model.alphas.numel() == 39
    assert all(torch.isfinite(v) for v in out.losses.values())
    drive = make("custom_ultra_cevae", **ANCESTOR_CEVAE, n_phenotypes=2)  # n_phenotypes: from the data
    x = blobs((12, 12))
    out = drive({"inp": x, aux.PHENOTYPES: torch.randn(4, 2)})
    assert {"pheno_loss", "ce_recon_loss"} <= set(out.losses)
    assert drive.model.model_config.max_n_squares == 3 and drive.model.max_side == 6


@pytest.mark.parametrize(
    "model,params,match",
    [
        ("ivaes", {"alpha_stepp": 0.1}, "unknown ivaes parameter 'alpha_stepp'"),
        ("ivaes", {"ivae_mode": "betaVAE"}, "ivae_mode must be one of iVAE, IDVAE, CI-iVAE"),
        ("ivaes", {"alpha_step": 0.0}, "alpha_step must be in"),
        ("ivaes", {"alpha_step": 1.5}, "alpha_step must be in"),
        ("ivaes", {"beta": -1.0}, "beta must be"),
        ("ivaes", {"M": 0}, "M must be a positive integer"),
        ("ivaes", {"ivae_mode": "iVAE", "M": 10}, "M applies to ivae_mode CI-iVAE only, not iVAE"),
        ("ivaes", {"ivae_mode": "IDVAE", "alpha_step": 0.1}, "alpha_step applies to ivae_mode CI-iVAE only"),
        ("ivaes", {"hidden_nodes_label_decoder": 64}, "hidden_nodes_label_decoder applies to ivae_mode IDVAE only"),
        ("ivaes", {"hidden_nodes_label_prior": 0}, "hidden_nodes_label_prior must be"),
        ("ivaes", {"predict_reparameterised": True}, "predict_reparameterised=true is not supported"),
        ("ivaes", {"kl_annealing": True}, "kl_annealing=true is not implemented"),
        ("ultra_cevae", {"ce_factr": 1.0}, "unknown ultra_cevae parameter 'ce_factr'"),
        ("ultra_cevae", {"ce_factor": -0.5}, "ce_factor must be"),
        ("ultra_cevae", {"square_size_factor": 0.5}, "square_size_factor must be >= 1"),
        ("ultra_cevae", {"min_n_squares": 3, "max_n_squares": 1}, "min_n_squares <= max_n_squares"),
        ("ultra_cevae", {"min_n_squares": -1}, "min_n_squares <= max_n_squares"),
    ],
)
def test_invalid_keys_are_refused_in_one_line(model, params, match):
    with pytest.raises(PythaeDriveConfigError, match=match) as exc:
        PythaeDriveConfig(
            latent_dim=16,
            model=model,
            input_shape=(12, 12),
            model_params={"n_aux": N_AUX, **params} if model == "ivaes" else params,
        )
    one_line(exc)


def test_ivaes_without_u_is_one_clear_error():
    with pytest.raises(PythaeDriveConfigError, match="n_aux is 0") as exc:
        make("ivaes")
    one_line(exc)
    drive = make("ivaes", **SMALL_IVAE)
    with pytest.raises(
        PythaeDriveConfigError, match="needs the auxiliary variable u in the batch under 'aux_u'"
    ) as exc:
        drive({"inp": blobs((12, 12))})
    one_line(exc)
    with pytest.raises(PythaeDriveConfigError, match=r"must have shape \(batch, n_aux\) = \(4, 3\)") as exc:
        drive({"inp": blobs((12, 12)), "aux_u": torch.zeros(4, 2)})
    one_line(exc)
    with pytest.raises(PythaeDriveConfigError, match="NaN") as exc:
        drive({"inp": blobs((12, 12)), "aux_u": torch.full((4, 3), float("nan"))})
    one_line(exc)


class _SquaredError(torch.nn.Module):
    def forward(self, recon, target):
        return (recon - target) ** 2


@pytest.mark.parametrize(
    "model,params",
    [
        ("ivaes", {"ivae_mode": "CI-iVAE", "orig_recon_loss": True}),
        ("ivaes", {"ivae_mode": "IDVAE", "orig_recon_loss": False}),
        ("ultra_cevae", {}),
    ],
)
def test_the_drives_elementwise_loss_replaces_the_squared_error(model, params):
    """reconstruction_loss='custom' with a squared error reproduces 'mse' exactly: the recon terms go through the
    drive's element-wise loss (so l1 / masked losses act on these models too)."""
    params = {**SMALL_IVAE, **MODE_PARAMS[params["ivae_mode"]], **params} if model == "ivaes" else params
    x, results = blobs((7, 9), batch=5), []
    for kind in ("mse", "custom"):
        torch.manual_seed(0)
        drive = PythaeDrive(
            PythaeDriveConfig(
                model=model,
                input_shape=(7, 9),
                latent_dim=4,
                n_features=4,
                reconstruction_loss=kind,
                model_params=params,
                custom_loss_class=_SquaredError if kind == "custom" else None,
            )
        )
        torch.manual_seed(1)
        out = drive({"inp": x, "aux_u": aux_u(5)})
        results.append({k: float(v.detach()) for k, v in out.losses.items()})
    assert results[0].keys() == results[1].keys()
    for k in results[0]:
        assert math.isclose(results[0][k], results[1][k], rel_tol=1e-6, abs_tol=1e-7), k
