"""pythae WarpDrive: every pythae model trains on 2D and 3D images through the optimiser contract.

Tiny shapes (1x12x12, 1x4x12x12; odd sizes where the size matters), fixed seeds, one
torch thread (these tensors are too small for threads to pay off on 2 shared cores).
"""

from __future__ import annotations

import math

import pytest
import pythae.models as pm
import torch
import torch.nn.functional as F

from Engineering.Engines.WarpDrives.pythaeDrive.network import (
    MODELS,
    PythaeDrive,
    PythaeDriveConfig,
    PythaeDriveConfigError,
    editable_fields,
    get_spec,
    model_names,
    pythae_defaults,
)
from Engineering.Engines.WarpDrives.pythaeDrive.network.custom_models import CUSTOM_MODELS
from Engineering.errors import UserError

CUSTOM = {s.name for s in CUSTOM_MODELS}  # the ancestor's models: their inputs differ (complex data, tables); own tests
ALL = tuple(n for n in model_names() if n not in CUSTOM)
PIXEL_LOSS_MODELS = [n for n in ALL if get_spec(n).custom_recon]
# smaller importance-sample counts keep the 3D runs of the IWAE family quick
FEW_SAMPLES = {
    "iwae": {"number_samples": 3},
    "ciwae": {"number_samples": 3},
    "miwae": {"number_samples": 3, "number_gradient_estimates": 2},
    "piwae": {"number_samples": 3, "number_gradient_estimates": 2},
}


pytestmark = pytest.mark.usefixtures("one_thread")


def blobs(shape, batch=4, channels=1, seed=0):
    """A fixed batch of smooth Gaussian blobs in [0, 1] at random centres."""
    g = torch.Generator().manual_seed(seed)
    grid = torch.meshgrid(*[torch.linspace(-1, 1, n) for n in shape], indexing="ij")
    out = []
    for _ in range(batch * channels):
        centre = torch.rand(len(shape), generator=g) - 0.5
        out.append(torch.exp(-sum((a - c) ** 2 for a, c in zip(grid, centre)) / 0.2))
    return torch.stack(out).reshape(batch, channels, *shape)


def make(model, shape=(12, 12), **kw):
    torch.manual_seed(0)
    kw.setdefault("latent_dim", 4)
    kw.setdefault("n_features", 8)
    return PythaeDrive(PythaeDriveConfig(model=model, is3D=len(shape) == 3, input_shape=shape, **kw))


def train(drive, batch, steps, lr=2e-3, terms=None):
    """Plain torch optimisers following the drive's contract; returns the monitored loss per step (and, into
    ``terms``, every logged loss term per step)."""
    opts = {s.name: torch.optim.Adam(s.param_groups, lr=lr) for s in drive.optimiser_specs()}
    history = []
    for step in range(steps):
        out = drive(batch, epoch=step, dataset_size=batch["inp"].shape[0])
        for opt in opts.values():
            opt.zero_grad()
        todo = [s for s in drive.losses_for_step(out) if s.loss is not None]
        for s in todo:  # every backward first: the losses share one graph
            s.loss.backward(inputs=s.params, retain_graph=s.retain_graph)
        for s in todo:
            opts[s.optimiser].step()
        history.append(out.losses[drive.spec.monitor].item())
        if terms is not None:
            for name, value in out.losses.items():
                terms.setdefault(name, []).append(float(value.detach()))
    drive.on_train_epoch_end()
    return history


def unstable_terms(terms: dict, monitor: str, k: int = 5) -> dict:
    """Logged loss terms that are not finite, or whose mean over the last k steps exceeds their first-k mean by
    more than the whole starting objective (the monitored loss): a term running away while the total hides it
    (pythae's gradient-learned VQ codebook: quantiser loss 45 -> 1067 on the demo while reconstruction fell)."""
    budget = abs(sum(terms[monitor][:k]) / k)
    bad = {}
    for name, h in terms.items():
        first, last = sum(h[:k]) / k, sum(h[-k:]) / k
        if not all(math.isfinite(v) for v in h) or last > first + budget:
            bad[name] = (round(first, 3), round(last, 3))
    return bad


def check_trains(drive, x, steps):
    trainable = [p for p in drive.parameters() if p.requires_grad]
    owned = [p for s in drive.optimiser_specs() for p in s.params]
    assert len(owned) == len({id(p) for p in owned}) == len(trainable), "each parameter in exactly one optimiser"
    before = [p.detach().clone() for p in trainable]
    terms: dict = {}
    hist = train(drive, {"inp": x}, steps, terms=terms)
    unchanged = [i for i, (a, p) in enumerate(zip(before, trainable)) if torch.equal(a, p)]
    assert not unchanged, f"{len(unchanged)} trainable tensors never changed"
    k = 5
    first, last = sum(hist[:k]) / k, sum(hist[-k:]) / k
    assert last < first, f"{drive.spec.monitor} did not go down: {hist}"
    assert not unstable_terms(terms, drive.spec.monitor), unstable_terms(terms, drive.spec.monitor)
    drive.eval()
    with torch.no_grad():
        z = drive.embed(x)
        rec = drive.reconstruct(x)
    assert z.shape == (x.shape[0], drive.config.latent_dim) and torch.isfinite(z).all()
    assert rec.shape == x.shape and torch.isfinite(rec).all()


# ----------------------------------------------------------------------------- registry / config
def test_registry_holds_every_model_pythae_exports():
    exported = {
        getattr(pm, n) for n in pm.__all__ if isinstance(getattr(pm, n), type) and issubclass(getattr(pm, n), pm.BaseAE)
    } - {pm.BaseAE}
    stock = {n: s for n, s in MODELS.items() if n not in CUSTOM}
    ours = {s.model_cls for s in stock.values()}
    covered = {c for c in exported if any(issubclass(m, c) for m in ours)}
    assert covered == exported, f"not registered: {sorted(c.__name__ for c in exported - covered)}"
    assert len(stock) == len(exported) == 25
    assert CUSTOM == {
        "ultra_vae",
        "ultra_factor_vae",
        "ultra_cevae",
        "ivaes",
        "complex_ae",
        "complex_vae",
        "complex_factor_vae",
    }
    for s in stock.values():  # each config class comes from its model's own pythae folder
        base = next(c for c in s.model_cls.__mro__ if c.__module__.startswith("pythae.models."))
        assert s.config_cls.__module__.rsplit(".", 1)[0] == base.__module__.rsplit(".", 1)[0], s.name


def test_unknown_model_name_lists_valid_names():
    with pytest.raises(ValueError, match="valid names: ae, vae, beta_vae") as err:
        PythaeDriveConfig(latent_dim=16, model="bvae")
    from Engineering.Engines import registry  # noqa: F401  (registers the drives' error type with run_cli)
    from Engineering.errors import USER_FACING

    assert not isinstance(err.value, UserError) and isinstance(err.value, tuple(USER_FACING))
    with pytest.raises(ValueError, match="vqvae"):
        get_spec("nope")
    assert get_spec("VQ_VAE").name == "vqvae"


def test_unknown_model_param_names_the_valid_fields():
    with pytest.raises(ValueError, match=r"unknown beta_tc_vae parameter 'betta'.*alpha, beta, gamma, use_mss"):
        PythaeDriveConfig(latent_dim=16, model="beta_tc_vae", model_params={"betta": 2.0})
    with pytest.raises(ValueError, match="latent_dim"):
        PythaeDriveConfig(model="vae", latent_dim=8, model_params={"latent_dim": 3})
    with pytest.raises(ValueError, match="adversarial_loss_scale"):
        PythaeDriveConfig(latent_dim=16, model="aae", model_params={"adversarial_loss_scale": "lots"})
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        PythaeDrive(
            PythaeDriveConfig(
                latent_dim=16, model="aae", input_shape=(8, 8), model_params={"adversarial_loss_scale": 2.0}
            )
        )


def test_model_params_override_pythae_defaults():
    assert pythae_defaults("beta_vae") == {"beta": 1.0}
    assert set(editable_fields("vqvae")) == {
        "commitment_loss_factor",
        "quantization_loss_factor",
        "num_embeddings",
        "use_ema",
        "decay",
    }
    assert make("beta_vae").model.beta == 1.0
    # a pythae-saved JSON carries bookkeeping fields; they are accepted when consistent
    saved = {"name": "BetaVAEConfig", "latent_dim": 4, "uses_default_encoder": True, "beta": 4.0}
    drive = make("beta_vae", model_params=saved)
    assert drive.model.beta == 4.0 and drive.model_config.latent_dim == 4
    assert make("rae_l2", model_params={"reg_weight": 0.5}).model_config.reg_weight == 0.5
    with pytest.raises(ValueError, match="not VAEConfig"):
        PythaeDriveConfig(latent_dim=16, model="beta_vae", model_params={"name": "VAEConfig"})


def test_config_errors():
    with pytest.raises(PythaeDriveConfigError, match="3 positive sizes"):
        PythaeDriveConfig(latent_dim=16, is3D=True, input_shape=(12, 12))
    with pytest.raises(PythaeDriveConfigError, match="nn must be one of conv, resnet"):
        PythaeDriveConfig(latent_dim=16, nn="unet")
    for model in ("msssim_vae", "vaegan"):  # their reconstruction term is not a pixel loss
        with pytest.raises(PythaeDriveConfigError, match="must be 'mse'"):
            PythaeDriveConfig(latent_dim=16, model=model, reconstruction_loss="l1")
    with pytest.raises(PythaeDriveConfigError, match="needs custom_loss_class"):
        PythaeDriveConfig(latent_dim=16, reconstruction_loss="custom")
    with pytest.raises(PythaeDriveConfigError, match="cannot import"):
        PythaeDriveConfig(latent_dim=16, reconstruction_loss="custom", custom_loss_class="no_such_module.Loss")


# ----------------------------------------------------------------------------- training, every model
@pytest.mark.parametrize("model", ALL)
def test_every_model_trains_2d(model):
    check_trains(make(model), blobs((12, 12)), steps=15)


@pytest.mark.parametrize("model", ALL)
def test_every_model_trains_3d(model):
    drive = make(model, (4, 12, 12), model_params=FEW_SAMPLES.get(model, {}))
    check_trains(drive, blobs((4, 12, 12)), steps=10)


def test_vqvae_quantiser_loss_stays_bounded_and_the_check_sees_a_runaway_codebook():
    """60 steps: the EMA codebook (our default) keeps every term bounded and the quantiser loss falls;
    pythae's gradient-learned codebook (use_ema false) lets it run away, which the per-term check reports."""
    x = blobs((12, 12))
    for use_ema in (True, False):
        drive = make("vqvae", model_params={"use_ema": use_ema})
        terms: dict = {}
        train(drive, {"inp": x}, 60, terms=terms)
        bad = unstable_terms(terms, drive.spec.monitor)
        if use_ema:
            assert not bad, bad
            assert sum(terms["vq_loss"][-5:]) < sum(terms["vq_loss"][5:10])
        else:
            assert "vq_loss" in bad, terms["vq_loss"][::10]


def test_resnet_family_trains_2d_and_3d():
    check_trains(make("vae", (13, 11), nn="resnet"), blobs((13, 11)), steps=20)
    check_trains(make("vqvae", (3, 9, 10), nn="resnet"), blobs((3, 9, 10)), steps=12)


@pytest.mark.parametrize("family", ["conv", "resnet"])
@pytest.mark.parametrize("shape", [(13, 17), (5, 7), (3, 13, 11), (1, 6, 9)])
def test_odd_sizes_reconstruct_to_input_size(family, shape):
    drive = make("vae", shape, nn=family, in_channels=2, n_levels=4)
    x = blobs(shape, batch=3, channels=2)
    out = drive({"inp": x})
    assert out.recon.shape == x.shape
    drive.eval()
    assert drive.reconstruct(x).shape == x.shape
    assert drive.embed(x).shape == (3, 4)


# ----------------------------------------------------------------------------- optimiser contract
def test_optimiser_specs_follow_pythae_trainers():
    names = {m: [s.name for s in make(m).optimiser_specs()] for m in ("vae", "factor_vae", "aae", "piwae", "vaegan")}
    assert names == {
        "vae": ["model"],
        "factor_vae": ["autoencoder", "discriminator"],
        "aae": ["autoencoder", "discriminator"],
        "piwae": ["encoder", "decoder"],
        "vaegan": ["encoder", "decoder", "discriminator"],
    }
    rae = make("rae_l2", model_params={"reg_weight": 0.01})
    assert not rae.is_multi_optimiser
    enc, dec = rae.param_groups()
    assert enc["weight_decay"] == 0.0 and dec["weight_decay"] == 0.01  # pythae's decoder regulariser
    assert {id(p) for p in dec["params"]} == {id(p) for p in rae.model.decoder.parameters()}
    with pytest.raises(ValueError, match="several optimisers"):
        make("aae").param_groups()


@pytest.mark.parametrize("model", ["factor_vae", "piwae", "vaegan"])
def test_each_loss_reaches_only_its_optimiser(model):
    drive = make(model)
    out = drive({"inp": blobs((12, 12))})
    steps = drive.losses_for_step(out)
    assert [s.optimiser for s in steps] == [s.name for s in drive.optimiser_specs()]
    live = [s for s in steps if s.loss is not None]
    expected = [torch.autograd.grad(s.loss, s.params, retain_graph=True, allow_unused=True) for s in live]
    for s in live:
        s.loss.backward(inputs=s.params, retain_graph=s.retain_graph)
    assert not live[-1].retain_graph and all(s.retain_graph for s in live[:-1])
    for s, grads in zip(live, expected):
        for p, g in zip(s.params, grads):
            assert (p.grad is None and g is None) or torch.allclose(p.grad, g)


def test_vaegan_equilibrium_gating_skips_optimisers():
    drive = make("vaegan")
    out = drive({"inp": blobs((12, 12))})
    assert set(out.updates) == {"encoder", "decoder", "discriminator"}
    out.updates["discriminator"] = False
    steps = drive.losses_for_step(out)
    assert steps[2].loss is None and steps[1].retain_graph is False


def test_single_optimiser_backward_is_plain():
    drive = make("vae")
    (step,) = drive.losses_for_step(drive({"inp": blobs((12, 12))}))
    assert step.params is None and step.loss is not None and step.optimiser == "model"


# ----------------------------------------------------------------------------- reconstruction losses
def _per_sample(t):
    return t.reshape(t.shape[0], -1).sum(-1)


def test_l1_loss_replaces_the_squared_error():
    x = blobs((12, 12))
    vae = make("vae", reconstruction_loss="l1")
    out = vae({"inp": x})
    assert torch.allclose(out.losses["recon_loss"], (0.5 * _per_sample((out.recon - x).abs())).mean())
    ae = make("ae", reconstruction_loss="l1")
    out = ae({"inp": x})
    assert torch.allclose(out.loss, _per_sample((out.recon - x).abs()).mean())


def test_bce_native_and_for_models_without_it():
    x = blobs((12, 12))
    for model in ("vae", "ae", "hvae"):  # pythae's own bce / through ReconTarget / probabilities for hvae
        drive = make(model, reconstruction_loss="bce")
        assert drive.config.decoder_activation == "sigmoid"
        out = drive({"inp": x})
        assert torch.isfinite(out.loss) and 0 <= out.recon.min() and out.recon.max() <= 1
        if model != "hvae":
            bce = F.binary_cross_entropy(out.recon, x, reduction="none")
            assert torch.allclose(out.losses.get("recon_loss", out.loss), _per_sample(bce).mean())
    check_trains(make("wae", reconstruction_loss="bce"), x, steps=15)


class SquaredError(torch.nn.Module):
    calls = 0

    def forward(self, recon, target):
        SquaredError.calls += 1
        return (recon - target) ** 2


@pytest.mark.parametrize("model", PIXEL_LOSS_MODELS)
def test_custom_loss_goes_inside_pythae_formula(model):
    """A custom squared error reproduces pythae's own mse exactly (loss and gradients), so a
    custom loss replaces exactly the element-wise term inside each model's formula."""
    x = blobs((7, 9), batch=5)
    results = []
    for kind in ("mse", "custom"):
        drive = make(
            model,
            (7, 9),
            n_features=4,
            reconstruction_loss=kind,
            custom_loss_class=SquaredError if kind == "custom" else None,
        )
        calls = SquaredError.calls
        torch.manual_seed(1)
        out = drive({"inp": x}, epoch=2, dataset_size=20)
        params = [p for p in drive.parameters() if p.requires_grad]
        results.append((out.losses, torch.autograd.grad(out.loss, params, allow_unused=True)))
    assert SquaredError.calls > calls, "custom loss was not called"
    (native, g0), (custom, g1) = results
    assert native.keys() == custom.keys()
    for k in native:
        assert torch.allclose(native[k], custom[k]), k
    for a, b in zip(g0, g1):
        assert (a is None and b is None) or torch.allclose(a, b, atol=1e-6)


def _capture_decoder_outputs(drive):
    seen = []
    drive.model.decoder.register_forward_hook(lambda mod, inp, out: seen.append(out["reconstruction"]))
    return seen


def test_masked_loss_counts_only_voxels_inside_the_mask():
    """pythae's recon term becomes 0.5 * sum(mask * (recon - x)^2), also for IWAE's K samples
    per image and FactorVAE's random half batch (the mask follows pythae's views of the data)."""
    shape = (4, 9, 10)
    x = blobs(shape, batch=5)
    mask = torch.zeros(5, 1, *shape)
    mask[..., 2:7, 3:8] = 1
    for model in ("vae", "iwae", "factor_vae"):
        drive = make(
            model,
            shape,
            reconstruction_loss="custom",
            custom_loss_class="masked_mse",
            model_params=FEW_SAMPLES.get(model, {}),
        )
        seen = _capture_decoder_outputs(drive)
        out = drive({"inp": x, "mask": mask})
        rec, xs, ms = seen[-1], x, mask
        if model == "factor_vae":
            xs, ms = x[out.recon_index], mask[out.recon_index]
        k = rec.shape[0] // xs.shape[0]  # importance samples per image
        rec = rec.reshape(xs.shape[0], k, -1)
        err = ms.reshape(xs.shape[0], 1, -1) * (rec - xs.reshape(xs.shape[0], 1, -1)) ** 2
        assert torch.allclose(out.losses["recon_loss"], 0.5 * err.sum(-1).mean()), model
    drive = make("vae", shape, reconstruction_loss="custom", custom_loss_class="masked_l1")
    assert torch.isfinite(drive({"inp": x, "mask": mask[:, :, :1]}).loss)  # broadcast over slices
    with pytest.raises(ValueError, match="needs a mask"):
        drive({"inp": x})
    with pytest.raises(ValueError, match="does not broadcast"):
        drive({"inp": x, "mask": mask[:2]})


def test_masked_custom_loss_trains():
    x = blobs((12, 12))
    mask = torch.ones_like(x)
    mask[..., :3] = 0
    drive = make("beta_vae", reconstruction_loss="custom", custom_loss_class="masked_mse")
    trainable = list(drive.parameters())
    before = [p.detach().clone() for p in trainable]
    opt = torch.optim.Adam(trainable, lr=2e-3)
    hist = []
    for _ in range(15):
        out = drive({"inp": x, "mask": mask})
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        hist.append(out.loss.item())
    assert sum(hist[-5:]) < sum(hist[:5])
    assert all(not torch.equal(a, b) for a, b in zip(before, trainable))


def test_custom_loss_by_dotted_path_and_torch_losses():
    x = blobs((12, 12))
    drive = make(
        "vae", reconstruction_loss="custom", custom_loss_class="torch.nn.SmoothL1Loss", custom_loss_params={"beta": 0.5}
    )
    out = drive({"inp": x})
    huber = F.smooth_l1_loss(out.recon, x, beta=0.5, reduction="none")
    assert torch.allclose(out.losses["recon_loss"], (0.5 * _per_sample(huber)).mean())
    bad = make("vae", reconstruction_loss="custom", custom_loss_class=lambda r, t: ((r - t) ** 2).mean())
    with pytest.raises(ValueError, match="element-wise"):
        bad({"inp": x})


# ----------------------------------------------------------------------------- model specifics
def test_models_with_autograd_in_forward_validate_without_grad():
    x = blobs((12, 12))
    for model in ("rae_gp", "hvae", "rhvae"):
        drive = make(model).eval()
        assert drive.needs_grad_in_eval
        with torch.no_grad():
            assert torch.isfinite(drive({"inp": x}).loss)
        with torch.inference_mode(), pytest.raises(RuntimeError, match="inference_mode=False"):
            drive({"inp": x})
    assert not make("vae").needs_grad_in_eval


def test_rhvae_metric_survives_a_checkpoint():
    x = blobs((12, 12))
    drive = make("rhvae")
    train(drive, {"inp": x}, steps=3)  # ends with on_train_epoch_end(): metric frozen
    state = drive.state_dict()
    assert all(isinstance(v, torch.Tensor) for v in state.values())  # safetensors-friendly
    assert state["model._extra_state"].shape[0] > 0
    fresh = make("rhvae")
    fresh.load_state_dict(state)
    losses = []
    for d in (drive, fresh):
        d.eval()
        torch.manual_seed(5)
        losses.append(d({"inp": x}).loss)
    assert torch.allclose(losses[0], losses[1])


def test_vqvae_embed_is_the_quantised_code():
    x = blobs((12, 12))
    for code_dim in (1, 2):
        drive = make("vqvae", vq_code_dim=code_dim).eval()
        z = drive.embed(x)
        assert z.shape == (4, 4)
        emb = drive.model.quantizer.embeddings  # the EMA codebook (our default) is a buffer, pythae's a layer
        codebook = emb.weight if hasattr(emb, "weight") else emb  # (num_embeddings, code_dim)
        codes = z.reshape(-1, code_dim)
        assert torch.cdist(codes, codebook).min(dim=1).values.max() < 1e-5
        assert torch.allclose(drive.decode(z), drive.reconstruct(x))
        if code_dim > 1:
            assert drive.model.encoder(x).embedding.shape == (4, code_dim, 2, 1)


def test_embed_of_special_latent_spaces():
    x = blobs((12, 12))
    z = make("svae").eval().embed(x)
    assert torch.allclose(z.norm(dim=-1), torch.ones(4), atol=1e-5)  # on the sphere
    assert (make("pvae").eval().embed(x).norm(dim=-1) < 1).all()  # in the Poincaré ball
    pvae_rn = make("pvae", model_params={"posterior_distribution": "riemannian_normal"})
    assert torch.isfinite(pvae_rn({"inp": x}).loss)
