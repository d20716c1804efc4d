"""Published ImLatent DiffAE checkpoints map onto our DiffAE and reproduce the reference outputs.

The reference files of ../shared/compat are copied into tests/fixtures/compat so
the repository is self-contained.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from Engineering.Engines.WarpDrives.DiffAE.network import (
    DiffAE,
    DiffAEConfig,
    WeightsMismatchError,
    load_published_state,
)
from Engineering.errors import UserError
from Engineering.io.checkpoints import fit_state

pytestmark = pytest.mark.usefixtures("one_thread")


FIXTURES = Path(__file__).resolve().parent / "fixtures" / "compat"
CH8 = FIXTURES / "diffae3d_ch8.safetensors"
IO = FIXTURES / "diffae3d_ch8_io.safetensors"
L128_KEYS = FIXTURES / "published_diffae3d_L128_keys.json"
TOL = 1e-4


@pytest.fixture(scope="module")
def ch8():
    meta = safe_open(str(CH8), "pt").metadata()
    return load_file(str(CH8)), meta


@pytest.fixture(scope="module")
def io():
    return load_file(str(IO))


def build(tensors, meta, which):
    state, inferred = load_published_state(tensors, which)
    cfg = DiffAEConfig(input_shape=tuple(json.loads(meta["input_shape"])), **inferred)
    model = DiffAE(cfg).eval()
    fit_state(model, state, "the published weights")
    model.load_state_dict(state)
    return model, inferred


def test_inferred_config_matches_metadata(ch8):
    tensors, meta = ch8
    state, inferred = load_published_state(tensors, "ema")
    assert "x_T" not in state and not any(k.startswith(("net.", "ema_net.")) for k in state)
    assert inferred == {
        "is3D": True,
        "in_channels": 1,
        "net_ch": int(meta["net_ch"]),
        "latent_dim": int(meta["latent_dim"]),
        "ch_mult": (1, 1, 2, 3, 4),
        "num_res_blocks": 2,
        "enc_ch_mult": (1, 1, 2, 3, 4, 4),
        "enc_num_res_blocks": 2,
    }
    assert meta["is3D"] == "True"
    net_state, _ = load_published_state(tensors, "net")
    assert not torch.equal(net_state["out.2.weight"], state["out.2.weight"])  # the two weight sets differ


@torch.no_grad()
def test_reproduces_reference_outputs(ch8, io):
    tensors, meta = ch8
    ema, _ = build(tensors, meta, "ema")
    net, _ = build(tensors, meta, "net")
    diffs = {
        "z_sem_net": (net.encode(io["x"]) - io["z_sem_net"]).abs().max().item(),
        "z_sem_ema": (ema.encode(io["x"]) - io["z_sem_ema"]).abs().max().item(),
        "eps_ema": (ema(io["x_t"], io["t"], io["z_sem_ema"]) - io["eps_ema"]).abs().max().item(),
    }
    assert all(d < TOL for d in diffs.values()), diffs


def _meta_state(shapes: dict) -> dict:
    return {k: torch.empty(v, device="meta") for k, v in shapes.items()}


def test_published_L128_layout_maps_exactly():
    shapes = json.loads(L128_KEYS.read_text())
    assert len(shapes) == 608
    published = {
        **{f"ema_net.{k}": v for k, v in _meta_state(shapes).items()},
        **{f"net.{k}": v for k, v in _meta_state(shapes).items()},
        "x_T": torch.empty(4, 1, 50, 128, 128, device="meta"),
    }
    state, inferred = load_published_state(published)
    assert inferred == {
        "is3D": True,
        "in_channels": 1,
        "net_ch": 32,
        "latent_dim": 128,
        "ch_mult": (1, 1, 2, 3, 4),
        "num_res_blocks": 2,
        "enc_ch_mult": (1, 1, 2, 3, 4, 4),
        "enc_num_res_blocks": 2,
    }
    cfg = DiffAEConfig(is3D=True, in_channels=1, input_shape=(50, 128, 128), latent_dim=128, net_ch=32)
    with torch.device("meta"):  # structure only: no memory, no init cost
        model = DiffAE(cfg)
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert ours == shapes
    fit_state(model, state, "the published weights")
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(20.8e6, rel=0.01)


def test_mismatch_is_one_clear_error(ch8):
    tensors, meta = ch8
    state, inferred = load_published_state(_meta_state({k: v.shape for k, v in tensors.items()}))
    # a wrong input_shape moves the attention blocks
    with torch.device("meta"):
        model = DiffAE(DiffAEConfig(input_shape=(8, 64, 64), **inferred))
    with pytest.raises(UserError) as err:
        fit_state(model, state, "the published weights")
    msg = str(err.value)
    assert "missing from the weights" in msg and "unexpected in the weights" in msg
    assert "qkv" in msg and "more)" in msg and "check input_shape" in msg
    # a wrong latent size shows the shapes
    with torch.device("meta"):
        model = DiffAE(DiffAEConfig(input_shape=(8, 32, 32), **{**inferred, "latent_dim": 32}))
    with pytest.raises(UserError, match=r"shape mismatch: .*weights \(16,.*\) vs model \(32,"):
        fit_state(model, state, "the published weights")


def test_not_a_published_checkpoint():
    with pytest.raises(WeightsMismatchError, match="no 'ema_net.\\*' tensors.*encoder"):
        load_published_state({"encoder.conv.weight": torch.zeros(1), "decoder.fc.bias": torch.zeros(1)})
    with pytest.raises(ValueError, match="which must be one of"):
        load_published_state({}, which="best")


def test_shipped_training_recipe_builds_the_published_architecture():
    """Configs/config_diffAE_ukbb.yaml resolves to the published model: every tensor name and shape of the
    published layout, [-1, 1] data, gradient clipping at 1, DiffAE's ddim20 test sampler."""
    from Engineering.config.loader import resolve
    from Engineering.Engines import registry
    from Engineering.Engines.WarpDrives.DiffAE.engine import clip_range, diffae_config

    repo = FIXTURES.parents[2]
    cfg = resolve(["--configyml_path", str(repo / "Configs" / "config_diffAE_ukbb.yaml")], registry.get("diffAE")).cfg
    model = DiffAE(diffae_config(cfg, 1))
    shapes = json.loads(L128_KEYS.read_text())  # {name: shape} of one published model
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert ours == {k: list(v) for k, v in shapes.items()}
    assert sum(v.numel() for v in model.parameters()) == pytest.approx(20.8e6, rel=0.01)
    assert clip_range(cfg) == (-1.0, 1.0) and cfg.training.grad_clip_val == 1.0
    assert (cfg.model.DiffAE.T_inv, cfg.model.DiffAE.spacing, cfg.data.interp_fact) == (20, "ddim", 1.0)
