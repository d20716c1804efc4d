"""DiffAE WarpDrive (2D/3D network) and the Gaussian diffusion math, on tiny CPU shapes."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from Engineering.Engines.WarpDrives.DiffAE.network import DiffAE, DiffAEConfig, DiffAEConfigError, blocks
from Engineering.Engines.WarpDrives.DiffAE.network.blocks import AttentionBlock, Resample
from Engineering.errors import UserError
from Engineering.Science.diffusion import GaussianDiffusion, respace_timesteps

pytestmark = pytest.mark.usefixtures("one_thread")


# two UNet levels, attention at the second (running resolution 16 -> 8)
TINY = dict(
    net_ch=8,
    latent_dim=6,
    ch_mult=(1, 2),
    enc_ch_mult=(1, 2, 2),
    num_res_blocks=1,
    enc_num_res_blocks=1,
    attn_res=(8,),
    dropout=0.0,
)


def tiny(**kw) -> DiffAE:
    torch.manual_seed(0)
    return DiffAE(DiffAEConfig(**{**TINY, **kw})).eval()


def signature(model: torch.nn.Module) -> dict:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


# ---- network ----------------------------------------------------------------------------


def test_2d_shapes():
    m = tiny(is3D=False, in_channels=2, input_shape=(16, 16))
    x = torch.randn(3, 2, 16, 16)
    z = m.encode(x)
    assert z.shape == (3, 6)
    eps = m(x, torch.tensor([0, 10, 999]), z)
    assert eps.shape == x.shape
    assert m.cfg.attention_levels() == (1,)
    assert any(isinstance(b, AttentionBlock) for b in m.modules())


@pytest.mark.parametrize("isotropic", [False, True])
def test_3d_shapes_and_resampling_axes(isotropic):
    m = tiny(is3D=True, input_shape=(4, 16, 16), isotropic=isotropic)
    seen = []
    for mod in m.modules():
        if isinstance(mod, Resample):
            mod.register_forward_hook(lambda mod, inp, out: seen.append((mod.mode, inp[0].shape[2:], out.shape[2:])))
    x = torch.randn(2, 1, 4, 16, 16)
    with torch.no_grad():
        z = m.encode(x)
        eps = m(x, torch.tensor([3, 500]), z)
    assert z.shape == (2, 6) and eps.shape == x.shape
    assert seen and {mode for mode, _, _ in seen} == {"down", "up"}
    for mode, before, after in seen:
        if isotropic:
            factor = 0.5 if mode == "down" else 2
            assert tuple(after) == tuple(int(s * factor) for s in before)
        else:  # in-plane only: the first spatial axis keeps its length
            assert after[0] == before[0] == 4
            assert after[1:] == (
                torch.Size([b // 2 for b in before[1:]]) if mode == "down" else torch.Size([b * 2 for b in before[1:]])
            )


def test_in_plane_only_accepts_any_first_axis_but_isotropic_needs_it_divisible():
    m = tiny(is3D=True, input_shape=(3, 16, 16))
    x = torch.randn(1, 1, 3, 16, 16)
    with torch.no_grad():
        assert m(x, torch.tensor([1]), m.encode(x)).shape == x.shape
    with pytest.raises(DiffAEConfigError, match="all spatial sizes"):
        DiffAEConfig(**{**TINY, "is3D": True, "input_shape": (3, 16, 16), "isotropic": True})


def test_no_sampling_noise_or_buffers_in_state():
    m = tiny(is3D=True, input_shape=(4, 16, 16))  # latent_norm none: the published model has no buffers
    assert list(m.buffers()) == []
    assert "x_T" not in m.state_dict()
    assert not any(k.endswith("x_T") for k in m.state_dict())


def test_batch_latent_norm_standardises_the_code_and_adds_only_its_statistics():
    plain, normed = tiny(input_shape=(16, 16)), tiny(input_shape=(16, 16), latent_norm="batch")
    # the published layout (latent_norm none) is unchanged; batch adds BatchNorm statistics, no weights
    extra = set(normed.state_dict()) - set(plain.state_dict())
    assert extra == {f"encoder.out.5.{k}" for k in ("running_mean", "running_var", "num_batches_tracked")}
    assert set(plain.state_dict()) <= set(normed.state_dict())
    normed.load_state_dict({**normed.state_dict(), **plain.state_dict()})  # same encoder weights as plain
    x = torch.randn(8, 1, 16, 16)
    normed.train()
    with torch.no_grad():
        raw = plain.encode(x)
        z = normed.encode(x)
    # training: each dimension standardised over the batch (biased variance, BatchNorm's eps)
    ref = (raw - raw.mean(0)) / torch.sqrt(raw.var(0, unbiased=False) + 1e-5)
    assert torch.allclose(z, ref, atol=1e-5)
    # evaluation: the running statistics, so a sample's code does not depend on its batch
    normed.eval()
    with torch.no_grad():
        alone, together = normed.encode(x[:1]), normed.encode(x)[:1]
    assert torch.allclose(alone, together, atol=1e-6)
    bn = normed.encoder.out[5]
    assert torch.allclose(alone, (raw[:1] - bn.running_mean) / torch.sqrt(bn.running_var + 1e-5), atol=1e-5)
    # a one-sample training batch (an epoch's remainder) uses the running statistics and leaves them as they are
    normed.train()
    before = bn.running_mean.clone()
    with torch.no_grad():
        one = normed.encode(x[:1])
    assert torch.allclose(one, alone, atol=1e-6) and torch.equal(bn.running_mean, before)


def test_flatten_head_keeps_the_layout_and_names_a_wrong_input_size():
    m = tiny(input_shape=(16, 16), enc_pool="flatten")
    head = m.encoder.out[3]
    assert isinstance(head, torch.nn.Linear) and head.in_features == 16 * 4 * 4  # 16 channels on a 4x4 map
    assert m.encode(torch.randn(2, 1, 16, 16)).shape == (2, 6)
    with pytest.raises(DiffAEConfigError, match=r"built for input_shape \(16, 16\).*\(8, 16\)"):
        m.encode(torch.randn(2, 1, 8, 16))
    for bad in ({"enc_pool": "max"}, {"latent_norm": "layer"}):
        with pytest.raises(DiffAEConfigError, match=next(iter(bad))):
            tiny(input_shape=(16, 16), **bad)


def test_in_plane_size_does_not_change_structure():
    # attention placement depends only on max(input_shape): same maximum, same weights
    a = tiny(is3D=True, input_shape=(4, 16, 16))
    b = tiny(is3D=True, input_shape=(6, 8, 16))
    assert signature(a) == signature(b)
    # without attention the structure is independent of the size altogether
    assert signature(tiny(input_shape=(16, 16), attn_res=())) == signature(tiny(input_shape=(48, 32), attn_res=()))
    # a built model also runs on other (valid) in-plane sizes
    x = torch.randn(1, 1, 4, 8, 24)
    with torch.no_grad():
        assert a(x, torch.tensor([5]), a.encode(x)).shape == x.shape


def test_published_layout_names():
    keys = tiny(is3D=True, input_shape=(2, 16, 16)).state_dict().keys()
    for k in [
        "time_embed.time_embed.0.weight",
        "input_blocks.0.0.weight",
        "input_blocks.1.0.emb_layers.1.weight",
        "input_blocks.1.0.cond_emb_layers.1.weight",
        "input_blocks.2.0.in_layers.0.weight",
        "input_blocks.3.1.qkv.weight",
        "middle_block.1.proj_out.weight",
        "output_blocks.1.2.in_layers.2.weight",
        "out.2.weight",
        "encoder.out.3.weight",
        "encoder.input_blocks.1.0.in_layers.2.weight",
    ]:
        assert k in keys, k
    # the encoder's blocks are unconditioned: no embedding or second conv
    assert not any(k.startswith("encoder.") and ("emb_layers" in k or "out_layers" in k) for k in keys)


def explicit_attention_block(blk: AttentionBlock, x: torch.Tensor) -> torch.Tensor:
    """Reference: qkv laid out [q, k, v] per head, softmax(q k^T / sqrt(d)) v written out."""
    b, c = x.shape[:2]
    heads, d = blk.num_heads, c // blk.num_heads
    flat = x.reshape(b, c, -1)
    qkv = F.conv1d(blk.norm(flat), blk.qkv.weight, blk.qkv.bias)
    q, k, v = qkv.reshape(b * heads, 3 * d, -1).split(d, dim=1)
    w = torch.softmax(torch.einsum("bct,bcs->bts", q, k) / math.sqrt(d), dim=-1)
    a = torch.einsum("bts,bcs->bct", w, v).reshape(b, c, -1)
    return (flat + F.conv1d(a, blk.proj_out.weight, blk.proj_out.bias)).reshape(x.shape)


@pytest.mark.parametrize("fused", [True, False])
def test_sdpa_attention_matches_explicit_softmax(monkeypatch, fused):
    torch.manual_seed(1)
    blk = AttentionBlock(8, groups=4, num_heads=2)
    for p in blk.parameters():
        torch.nn.init.normal_(p, std=0.3)
    x = torch.randn(2, 8, 3, 4, 5)
    with torch.no_grad():
        torch.testing.assert_close(blk(x), explicit_attention_block(blk, x), atol=1e-5, rtol=1e-5)
    # training path: SDPA's fused backward, and where torch lacks the fused CPU kernel the query-chunked
    # backward (forced into several chunks here)
    monkeypatch.setattr(blocks, "_CHUNK_ELEMS", 4 * 60 * 7)
    if not fused:
        monkeypatch.setattr(blocks, "_FLASH_CPU", None)
    used = []
    real = blocks._SDPAChunkedBackward.apply
    monkeypatch.setattr(blocks._SDPAChunkedBackward, "apply", lambda *a: used.append(1) or real(*a))
    params = [x.requires_grad_(), *blk.parameters()]
    g = torch.randn_like(x)
    grads = torch.autograd.grad(blk(x), params, g)
    ref = torch.autograd.grad(explicit_attention_block(blk, x), params, g)
    for got, want in zip(grads, ref):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    assert bool(used) is not fused


def test_zero_initialised_residual_branches_and_training_step():
    m = tiny(input_shape=(16, 16), dropout=0.1).train()
    x = torch.randn(2, 1, 16, 16)
    t = torch.tensor([10, 700])
    # residual branches and the output start at zero, as in DDPM/DiffAE: a fresh model predicts eps = 0
    assert torch.count_nonzero(m(x, t, m.encode(x))) == 0
    assert m.encoder.out[3].weight.abs().sum() > 0  # the encoder's head is not zeroed
    for p in m.parameters():
        torch.nn.init.normal_(p, std=0.1)
    loss = GaussianDiffusion().loss(m, x, m.encode(x), t, torch.randn_like(x))
    loss.backward()
    assert torch.isfinite(loss)
    # the semantic encoder is trained end to end through the UNet's conditioning
    assert m.encoder.out[3].weight.grad.abs().sum() > 0
    assert m.encoder.input_blocks[0][0].weight.grad.abs().sum() > 0


def test_config_errors_are_clear():
    with pytest.raises(DiffAEConfigError, match="input_shape must have 3 entries"):
        DiffAEConfig(latent_dim=16, is3D=True, input_shape=(16, 16))
    with pytest.raises(DiffAEConfigError, match=r"input_shape \(30, 32\).*multiples of 2\*\*\(len\(ch_mult\)-1\) = 16"):
        DiffAEConfig(latent_dim=16, input_shape=(30, 32))
    with pytest.raises(DiffAEConfigError, match="net_ch=48"):
        DiffAEConfig(latent_dim=16, net_ch=48)
    with pytest.raises(DiffAEConfigError, match="dropout"):
        DiffAEConfig(latent_dim=16, dropout=1.5)
    with pytest.raises(DiffAEConfigError, match="ch_mult"):
        DiffAEConfig(latent_dim=16, ch_mult=(1, 0))
    with pytest.raises(DiffAEConfigError, match="enc_ch_mult"):
        DiffAEConfig(latent_dim=16, input_shape=(16, 16), ch_mult=(1, 2), enc_ch_mult=(1, 1, 1, 1, 1, 1))
    from Engineering.Engines import registry  # noqa: F401  (registers the drives' error type with run_cli)
    from Engineering.errors import USER_FACING

    assert issubclass(DiffAEConfigError, ValueError) and not issubclass(DiffAEConfigError, UserError)
    assert any(issubclass(DiffAEConfigError, t) for t in USER_FACING)
    # lists (YAML/JSON) and 0/1 flags (CLI) are accepted
    cfg = DiffAEConfig(latent_dim=16, is3D=1, input_shape=[4, 32, 32], ch_mult=[1, 2])
    assert cfg.is3D is True and cfg.input_shape == (4, 32, 32) and cfg.ch_mult == (1, 2)
    assert DiffAEConfig(**cfg.to_dict()) == cfg


def test_runtime_input_checks():
    m = tiny(input_shape=(16, 16))
    with pytest.raises(DiffAEConfigError, match="multiples of 2"):
        m(torch.randn(1, 1, 16, 15), torch.tensor([1]), torch.randn(1, 6))
    with pytest.raises(DiffAEConfigError, match="C=1"):
        m.encode(torch.randn(1, 3, 16, 16))
    with pytest.raises(DiffAEConfigError, match=r"z_sem of shape \(2, 6\)"):
        m(torch.randn(2, 1, 16, 16), torch.tensor([1, 2]), torch.randn(2, 5))
    x, z = torch.randn(2, 1, 16, 16), torch.randn(2, 6)
    with torch.no_grad():  # one scalar timestep serves the whole batch
        torch.testing.assert_close(m(x, 7, z), m(x, torch.tensor([7, 7]), z))


# ---- diffusion --------------------------------------------------------------------------


def test_respacing():
    # DiffAE's default "ddim" spacing: guided-diffusion's space_timesteps(1000, "ddim20") = range(0, 1000, 50)
    assert respace_timesteps(1000, 20).tolist() == list(range(0, 1000, 50))
    assert respace_timesteps(1000, 3).tolist() == [0, 334, 668]  # the smallest stride giving exactly 3 steps
    assert respace_timesteps(1000, 10).tolist() == list(range(0, 1000, 100))
    with pytest.raises(ValueError, match="integer stride"):
        respace_timesteps(1000, 700)
    ts = respace_timesteps(1000, 20, "even")
    assert ts.tolist()[:4] == [0, 53, 105, 158] and ts[-1] == 999 and len(ts) == 20
    assert bool((ts[1:] > ts[:-1]).all())
    assert torch.equal(respace_timesteps(1000, 1000), torch.arange(1000))
    assert respace_timesteps(1000, 1).tolist() == [0]
    assert torch.equal(GaussianDiffusion(T=10).respace(4), torch.tensor([0, 3, 6, 9]))
    for bad in (0, 1001, 2.5):
        with pytest.raises(ValueError, match=r"\[1, 1000\]"):
            respace_timesteps(1000, bad)


def test_schedule_and_q_sample():
    d = GaussianDiffusion()
    assert d.betas[0].item() == pytest.approx(1e-4) and d.betas[-1].item() == pytest.approx(0.02)
    x0, noise = torch.randn(2, 1, 4, 4), torch.randn(2, 1, 4, 4)
    t = torch.tensor([0, 999])
    xt = d.q_sample(x0, t, noise)
    ab = d.alphas_cumprod[t].float().view(2, 1, 1, 1)
    torch.testing.assert_close(xt, ab.sqrt() * x0 + (1 - ab).sqrt() * noise)
    # the oracle noise predictor has zero loss; a fixed t and noise make the loss deterministic
    oracle = lambda x_t, t_, z: noise  # noqa: E731
    assert d.loss(oracle, x0, None, t, noise).item() == pytest.approx(0.0, abs=1e-12)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    zero = lambda x_t, t_, z: torch.zeros_like(x_t)  # noqa: E731
    assert d.loss(zero, x0, None, generator=g1).item() == d.loss(zero, x0, None, generator=g2).item()


def test_p2_weighting_follows_the_paper_formula():
    """P2 (Choi et al. 2022): lambda_t = 1 / (k + SNR_t)^gamma with SNR_t = abar_t / (1 - abar_t), here divided
    by its mean over the T steps; the loss is each sample's MSE times its timestep's weight."""
    T, gamma, k = 1000, 0.5, 2.0
    d = GaussianDiffusion(T=T, weighting="p2", p2_gamma=gamma, p2_k=k)
    betas = [1e-4 + (0.02 - 1e-4) * i / (T - 1) for i in range(T)]
    abar, lam = 1.0, []
    for b in betas:
        abar *= 1.0 - b
        lam.append((k + abar / (1.0 - abar)) ** -gamma)
    mean = sum(lam) / T
    for t in (0, 10, 250, 500, 999):
        assert d.loss_weights[t].item() == pytest.approx(lam[t] / mean, rel=1e-9)
    assert d.loss_weights[0] < d.loss_weights[500] < d.loss_weights[999]  # weight moves to the noisy steps
    x0, noise = torch.randn(3, 1, 4, 4), torch.randn(3, 1, 4, 4)
    t = torch.tensor([5, 400, 990])
    zero = lambda x_t, t_, z: torch.zeros_like(x_t)  # noqa: E731
    per_sample = noise.square().flatten(1).mean(1)
    want = sum(per_sample[i].item() * lam[t[i]] / mean for i in range(3)) / 3
    assert d.loss(zero, x0, None, t, noise).item() == pytest.approx(want, rel=1e-5)
    # validation's plain MSE, and the uniform diffusion, are untouched by the weighting
    assert d.loss(zero, x0, None, t, noise, weighted=False).item() == pytest.approx(per_sample.mean().item(), rel=1e-6)
    assert GaussianDiffusion().loss(zero, x0, None, t, noise).item() == pytest.approx(
        per_sample.mean().item(), rel=1e-6
    )
    # truncated SNR (Salimans & Ho 2022): eps weight max(1, 1/SNR_t), i.e. x0-error weight max(SNR_t, 1)
    tr = GaussianDiffusion(T=T, weighting="truncated_snr")
    abar = 1.0
    for i, b in enumerate(betas):
        abar *= 1.0 - b
        if i in (0, 200, 999):
            assert tr.loss_weights[i].item() == pytest.approx(max(1.0, (1.0 - abar) / abar), rel=1e-9)
    with pytest.raises(ValueError, match="weighting"):
        GaussianDiffusion(weighting="snr")


def point_mass_model(d: GaussianDiffusion, target: torch.Tensor):
    """The exact noise predictor for data concentrated on ``target``."""

    def eps(x_t, t, z):
        ab = d.alphas_cumprod[t].to(x_t.dtype).view(-1, *([1] * (x_t.ndim - 1)))
        return (x_t - ab.sqrt() * target) / (1 - ab).sqrt()

    return eps


@pytest.mark.parametrize("steps", [1, 5, 20])
def test_ddim_invert_then_sample_round_trips(steps):
    d = GaussianDiffusion()
    torch.manual_seed(0)
    x0 = torch.randn(2, 1, 3, 8, 8)
    # a point-mass denoiser: DDIM maps any x_T to the point, and inversion is exact
    model = point_mass_model(d, x0)
    x_T = d.ddim_invert(model, x0, None, steps)
    assert not torch.allclose(x_T, x0)
    # (a single step at t=0 divides by sqrt(1 - abar_0) = 0.01: float32 cancellation, hence the looser bound)
    tol = 1e-3 if steps == 1 else 1e-5
    torch.testing.assert_close(d.ddim_sample(model, x_T, None, steps), x0, atol=tol, rtol=tol)


def reference_ddim(d: GaussianDiffusion, model, x, steps: int, invert: bool):
    """DDIM (eta=0) written out on the respaced chain's own alpha_bar arrays, in float64."""
    ts = respace_timesteps(d.T, steps)
    ab = d.alphas_cumprod[ts]
    ab_prev = torch.cat([torch.ones(1, dtype=ab.dtype), ab[:-1]])
    ab_next = torch.cat([ab[1:], torch.zeros(1, dtype=ab.dtype)])
    x = x.double()
    for i in range(steps) if invert else reversed(range(steps)):
        eps = model(x, torch.full((x.shape[0],), int(ts[i])), None)
        x0 = (1 / ab[i]).sqrt() * x - (1 / ab[i] - 1).sqrt() * eps
        target = ab_next[i] if invert else ab_prev[i]
        x = target.sqrt() * x0 + (1 - target).sqrt() * eps
    return x.float()


@pytest.mark.parametrize("steps", [1, 4])
def test_ddim_matches_reference_formulas(steps):
    d = GaussianDiffusion()
    model = lambda x_t, t, z: torch.tanh(x_t) * (t.to(x_t.dtype).view(-1, 1, 1, 1) / 1000 + 0.5)  # noqa: E731
    x = torch.randn(2, 1, 4, 4)
    torch.testing.assert_close(
        d.ddim_invert(model, x, None, steps), reference_ddim(d, model, x, steps, True), atol=1e-5, rtol=1e-5
    )
    torch.testing.assert_close(
        d.ddim_sample(model, x, None, steps), reference_ddim(d, model, x, steps, False), atol=1e-4, rtol=1e-4
    )


def test_ddim_clip_and_model_integration():
    d = GaussianDiffusion()
    m = tiny(input_shape=(16, 16))
    x = torch.randn(2, 1, 16, 16)
    calls = []

    def net(x_t, t, z):
        calls.append(t.clone())
        return m(x_t, t, z)

    z = m.encode(x)
    x_T = d.ddim_invert(net, x, z, 3)
    out = d.ddim_sample(net, x_T, z, 3, clip=(-1.0, 1.0))
    assert out.shape == x.shape and bool(out.abs().max() <= 1.0 + 1e-6)
    assert [c.tolist() for c in calls] == [[0, 0], [334, 334], [668, 668], [668, 668], [334, 334], [0, 0]]
    assert all(c.dtype == torch.long for c in calls)


@pytest.mark.parametrize("is3D", [False, True])
def test_activation_checkpointing_gives_the_same_loss_and_gradients(is3D):
    kw = {"is3D": True, "input_shape": (4, 16, 16)} if is3D else {}
    torch.manual_seed(0)
    plain = DiffAE(DiffAEConfig(**{**TINY, **kw, "dropout": 0.0}))
    ckpt = DiffAE(DiffAEConfig(**{**TINY, **kw, "dropout": 0.0}))
    ckpt.load_state_dict(plain.state_dict())
    ckpt.activation_checkpointing = ckpt.encoder.activation_checkpointing = True
    g = torch.Generator().manual_seed(1)
    shape = (2, TINY.get("in_channels", 1), *((4, 16, 16) if is3D else (16, 16)))
    x, noise = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
    t = torch.tensor([3, 7])
    losses, kept = [], []
    for net in (plain, ckpt):
        saved = [0]

        def pack(tensor, saved=saved):  # what autograd keeps for the backward pass, in bytes
            saved[0] += tensor.numel() * tensor.element_size()
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            loss = F.mse_loss(net(x + noise, t, net.encode(x)), noise)
        loss.backward()
        losses.append(float(loss.detach()))
        kept.append(saved[0])
    assert losses[0] == pytest.approx(losses[1], rel=1e-6)
    assert kept[1] < 0.5 * kept[0]  # the point: far fewer activations kept between forward and backward
    grads = dict(plain.named_parameters())
    assert any(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in grads.values())
    for name, p in ckpt.named_parameters():
        torch.testing.assert_close(p.grad, grads[name].grad, rtol=1e-5, atol=1e-7, msg=name)
    with torch.no_grad():  # no gradients: the blocks run plainly, the same output
        torch.testing.assert_close(ckpt.encode(x), plain.encode(x))


# ---- fast paths (docs/results/speed.md): the same numbers as the plain operators -------------------------------------


def _plain_down(x: torch.Tensor, factor) -> torch.Tensor:
    return (F.avg_pool3d if x.ndim == 5 else F.avg_pool2d)(x, factor)


@pytest.mark.parametrize(
    "dims,shape,layout",
    [
        (2, (2, 3, 8, 12), torch.contiguous_format),
        (3, (2, 3, 5, 8, 12), torch.contiguous_format),
        (3, (2, 3, 5, 8, 12), torch.channels_last_3d),
    ],
)
def test_in_plane_downsampling_equals_average_pooling_values_and_gradients(dims, shape, layout):
    r = Resample("down", dims, in_plane_only=True)
    x = torch.randn(shape).contiguous(memory_format=layout).requires_grad_(True)
    x_ref = x.detach().clone().requires_grad_(True)
    out, ref = r(x), _plain_down(x_ref, r.factor)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-6)
    w = torch.randn(ref.shape)
    (out * w).sum().backward()
    (ref * w).sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=0, atol=1e-6)
    # bf16 on CPU (no 3D pooling kernel there): the same mean, to bf16 precision
    torch.testing.assert_close(r(x.detach().bfloat16()).float(), ref.detach(), rtol=2e-2, atol=2e-2)


def test_isotropic_and_odd_downsampling_still_pool():
    iso = Resample("down", 3, in_plane_only=False)
    x = torch.randn(1, 2, 4, 6, 6)
    assert torch.equal(iso(x), F.avg_pool3d(x, 2))
    odd = torch.randn(1, 2, 7, 7)  # floor, as the pooling kernel
    assert torch.equal(Resample("down", 2, True)(odd), F.avg_pool2d(odd, 2))


def test_fast_dropout_keeps_the_distribution_and_is_the_identity_in_eval():
    drop = blocks.FastDropout(0.25)
    x = torch.ones(400_000, requires_grad=True)
    y = drop(x)
    values = torch.unique(y.detach())
    assert values.tolist() == pytest.approx([0.0, 1 / 0.75])
    assert float((y.detach() > 0).float().mean()) == pytest.approx(0.75, abs=0.005)
    assert float(y.detach().mean()) == pytest.approx(1.0, abs=0.01)  # unbiased
    y.sum().backward()
    assert torch.equal(x.grad, y.detach())  # the gradient is the same mask
    drop.eval()
    z = torch.randn(10)
    assert torch.equal(drop(z), z)
    assert torch.equal(blocks.FastDropout(0.0).train()(z), z)


@pytest.mark.parametrize("is3D", [False, True])
def test_optimised_fp32_paths_give_the_plain_latents_and_noise(monkeypatch, is3D):
    kw = {"is3D": True, "input_shape": (4, 16, 16)} if is3D else {}
    net = tiny(**kw)
    x = torch.randn(2, 1, *((4, 16, 16) if is3D else (16, 16)))
    t = torch.tensor([3, 700])
    with torch.no_grad():
        z, eps = net.encode(x), net(x, t, net.encode(x))
        fast32 = net.fast_encoder(torch.float32)(x)  # the embedding copy (channels-last in 3D)
        monkeypatch.setattr(
            Resample,
            "forward",
            lambda self, h: (
                _plain_down(h, self.factor)
                if self.mode == "down"
                else F.interpolate(h, scale_factor=self.factor, mode="nearest")
            ),
        )
        z_plain, eps_plain = net.encode(x), net(x, t, net.encode(x))
    torch.testing.assert_close(z, z_plain, rtol=0, atol=1e-5)
    torch.testing.assert_close(eps, eps_plain, rtol=0, atol=1e-5)
    torch.testing.assert_close(fast32, z_plain, rtol=0, atol=1e-5)


@pytest.mark.parametrize("is3D", [False, True])
def test_bf16_embedding_copy_is_close_float32_and_checks_its_input(is3D):
    kw = {"is3D": True, "input_shape": (4, 16, 16)} if is3D else {}
    net = tiny(**kw)
    x = torch.randn(3, 1, *((4, 16, 16) if is3D else (16, 16)))
    fast = net.fast_encoder(torch.bfloat16)
    with torch.no_grad():
        z, z16 = net.encode(x), fast(x)
    assert z16.dtype == torch.float32 and z16.shape == z.shape
    assert not torch.equal(z16, z)  # it did run in bf16
    assert float(F.cosine_similarity(z16, z).min()) > 0.999
    assert all(p.dtype == torch.float32 for p in net.parameters())  # the model itself is untouched
    with pytest.raises(DiffAEConfigError):
        fast(torch.randn(1, 2, *x.shape[2:]))  # wrong channel count: the same clear error as encode


def test_bf16_embedding_keeps_a_code_with_a_large_mean_and_small_spread():
    """The head runs in float32: a pre-normalisation code of mean ~100 and spread ~0.1 (bf16 resolves 0.5 at
    100) must keep its standardised values."""
    net = tiny(latent_norm="batch")
    x = torch.randn(16, 1, 16, 16)
    proj, bn = net.encoder.out[3], net.encoder.out[-1]
    with torch.no_grad():
        proj.weight.mul_(0.1)
        proj.bias.fill_(100.0)
        pre = net.encoder.out[:-1](_trunk(net, x))
        bn.running_mean.copy_(pre.mean(0))
        bn.running_var.copy_(pre.var(0))
        z, z16 = net.encode(x), net.fast_encoder(torch.bfloat16)(x)
    assert float(z.std()) > 0.5  # standardised: the signal is the spread, not the mean
    assert float(F.cosine_similarity(z16, z).min()) > 0.99
    assert float((z16 - z).abs().max()) < 0.1


def _trunk(net: DiffAE, x: torch.Tensor) -> torch.Tensor:
    h = x
    for m in [*net.encoder.input_blocks, net.encoder.middle_block]:
        h = m(h)
    return h
