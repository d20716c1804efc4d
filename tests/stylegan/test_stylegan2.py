"""The StyleGAN2 WarpDrive: FIR resampling against the paper's upfirdn2d formula, shapes for any channel count,
style mixing, truncation, noise inputs, and the regularisers' gradients."""

import pytest
import torch
import torch.nn.functional as F

from Engineering.Engines.WarpDrives.StyleGAN2.network import (
    Discriminator,
    Generator,
    StyleGAN2Config,
    StyleGAN2ConfigError,
)
from Engineering.Engines.WarpDrives.StyleGAN2.network.resample import (
    blur2d,
    downsample2d,
    make_kernel,
    upfirdn2d,
    upsample2d,
)
from Engineering.Science.gan_losses import d_logistic_loss, g_nonsaturating_loss, path_length_penalty, r1_penalty


def naive_upfirdn2d(x, k, up, down, pad):
    """The reference definition, step by step: insert up - 1 zeros after every sample, pad (negative = crop),
    convolve (a true convolution: the kernel flipped), keep every down-th sample."""
    b, c, h, w = x.shape
    u = torch.zeros(b, c, h * up, w * up, dtype=x.dtype)
    u[:, :, ::up, ::up] = x
    p0, p1 = pad
    u = F.pad(u, (max(p0, 0), max(p1, 0), max(p0, 0), max(p1, 0)))
    u = u[:, :, max(-p0, 0) : u.shape[2] - max(-p1, 0), max(-p0, 0) : u.shape[3] - max(-p1, 0)]
    kf = torch.flip(k, (0, 1))[None, None].repeat(c, 1, 1, 1)
    y = F.conv2d(u, kf, groups=c)
    return y[:, :, ::down, ::down]


@pytest.mark.parametrize(
    "up,down,pad",
    [
        (2, 1, (2, 1)),
        (2, 1, (1, 1)),
        (2, 1, (4, 3)),
        (2, 1, (-1, 2)),
        (1, 2, (1, 1)),
        (1, 2, (2, 2)),
        (1, 1, (1, 2)),
        (1, 1, (-1, 1)),
    ],
)
@pytest.mark.parametrize("hw", [(8, 8), (7, 10)])
def test_upfirdn2d_matches_the_reference_formula(up, down, pad, hw):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, *hw, generator=g, dtype=torch.float64)
    k = torch.rand(4, 4, generator=g, dtype=torch.float64)  # not symmetric: a missing flip would show
    ref = naive_upfirdn2d(x, k, up, down, pad)
    out = upfirdn2d(x, k, up=up, down=down, pad=pad)
    assert out.shape == ref.shape
    assert torch.allclose(out, ref, atol=1e-5, rtol=0)


def test_resample_sizes_and_gain():
    k = make_kernel()
    assert torch.isclose(k.sum(), torch.tensor(1.0))
    x = torch.ones(1, 2, 8, 8)
    up, down = upsample2d(x, k), downsample2d(x, k)
    assert up.shape[-2:] == (16, 16) and down.shape[-2:] == (4, 4)
    # a constant stays constant away from the zero-padded border: the gains keep the mean
    assert torch.allclose(up[..., 2:-2, 2:-2], torch.ones(1, 2, 12, 12), atol=1e-6)
    assert torch.allclose(down[..., 1:-1, 1:-1], torch.ones(1, 2, 2, 2), atol=1e-6)
    assert blur2d(x, k, (1, 2)).shape[-2:] == (8, 8)


def tiny(size=32, channels=1, **kw):
    return StyleGAN2Config(size=size, channels=channels, style_dim=32, n_mlp=2, channel_max=16, **kw)


@pytest.mark.parametrize("channels", [1, 3, 6])
@pytest.mark.parametrize("size", [32, 64])
def test_generator_and_discriminator_shapes(channels, size):
    cfg = tiny(size, channels)
    g, d = Generator(cfg), Discriminator(cfg)
    assert cfg.n_latent == 2 * cfg.log_size - 2 and len(cfg.noise_sizes()) == cfg.n_noise
    img = g(torch.randn(3, cfg.style_dim))
    assert img.shape == (3, channels, size, size) and torch.isfinite(img).all()
    logits = d(img)
    assert logits.shape == (3, 1) and torch.isfinite(logits).all()
    with pytest.raises(ValueError, match="images must be"):
        d(torch.zeros(3, channels + 1, size, size))
    with pytest.raises(ValueError, match="ws must be"):
        g.synthesis(torch.zeros(3, cfg.n_latent + 1, cfg.style_dim))


def test_noise_inputs_are_used_and_fixed_noise_is_deterministic():
    cfg = tiny()
    g = Generator(cfg)
    for m in g.modules():
        if type(m).__name__ == "NoiseInjection":
            m.weight.data.fill_(0.5)
    ws = g.styles(torch.randn(2, cfg.style_dim))
    n1, n2 = g.make_noise(2, torch.Generator().manual_seed(1)), g.make_noise(2, torch.Generator().manual_seed(2))
    assert [n.shape[-1] for n in n1] == cfg.noise_sizes()
    a, b, c = g.synthesis(ws, n1), g.synthesis(ws, n1), g.synthesis(ws, n2)
    assert torch.equal(a, b)
    assert (a - c).abs().mean() > 1e-3


def test_style_mixing_and_truncation():
    cfg = tiny(64)
    g = Generator(cfg)
    z1, z2 = torch.randn(2, cfg.style_dim), torch.randn(2, cfg.style_dim)
    w1, w2 = g.mapping(z1), g.mapping(z2)
    ws = g.styles(z1, z2, crossover=3)
    assert torch.allclose(ws[:, :3], w1[:, None].expand(-1, 3, -1))
    assert torch.allclose(ws[:, 3:], w2[:, None].expand(-1, cfg.n_latent - 3, -1))
    g.w_avg.copy_(torch.randn(cfg.style_dim))
    assert torch.allclose(g.styles(z1, truncation=0.0), g.w_avg.expand(2, cfg.n_latent, -1))
    half = g.styles(z1, truncation=0.5)
    assert torch.allclose(half, (g.w_avg + 0.5 * (w1 - g.w_avg))[:, None].expand(-1, cfg.n_latent, -1), atol=1e-6)
    noise = g.make_noise(2, torch.Generator().manual_seed(0))
    same = g.synthesis(g.styles(torch.randn(2, cfg.style_dim), truncation=0.0), noise)
    assert torch.allclose(same[0], same[1], atol=1e-5)  # psi = 0: every z is the average image
    g.update_w_avg(w1, beta=0.0)
    assert torch.allclose(g.w_avg, w1.mean(0))


def test_losses_and_regularisers_are_finite_with_gradients():
    cfg = tiny()
    g, d = Generator(cfg), Discriminator(cfg)
    real = torch.randn(4, 1, 32, 32, requires_grad=True)
    real_logits = d(real)
    fake = g(torch.randn(4, cfg.style_dim))
    loss_d = d_logistic_loss(real_logits, d(fake.detach()))
    r1 = r1_penalty(real_logits, real)
    (loss_d + 5.0 * r1).backward()
    assert torch.isfinite(loss_d) and torch.isfinite(r1) and r1 > 0
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in d.parameters())
    assert torch.isclose(d_logistic_loss(torch.zeros(4, 1), torch.zeros(4, 1)), 2 * torch.log(torch.tensor(2.0)))

    g.zero_grad()
    ws = g.styles(torch.randn(4, cfg.style_dim)).detach().requires_grad_(True)
    img = g.synthesis(ws)
    pl, mean, lengths = path_length_penalty(img, ws, torch.tensor(0.0))
    loss_g = g_nonsaturating_loss(d(img)) + 2.0 * pl
    loss_g.backward()
    assert torch.isfinite(pl) and lengths.shape == (4,) and (lengths > 0).all()
    assert torch.isclose(mean, 0.01 * lengths.mean())
    grads = [p.grad for n, p in g.named_parameters() if not n.startswith("mapping")]
    assert all(gr is not None and torch.isfinite(gr).all() for gr in grads)


@pytest.mark.parametrize(
    "bad",
    [{"size": 48}, {"size": 512}, {"channels": 0}, {"mixing_prob": 1.5}, {"lr_mlp": 0.0}, {"channel_multiplier": -1}],
)
def test_config_errors_name_the_field(bad):
    with pytest.raises(StyleGAN2ConfigError, match=next(iter(bad))):
        tiny(**bad) if "size" not in bad else StyleGAN2Config(**bad)
