"""Seed 000's StyleGAN2 / ReStyle pieces against their papers' formulas, written out here independently of the
project's code (issue 33: they were tested for shapes and finiteness only).

- Modulated convolution with demodulation: Karras et al., "Analyzing and Improving the Image Quality of StyleGAN"
  (CVPR 2020), eq. 1 and 3: w'_ijk = s_i w_ijk, w''_ijk = w'_ijk / sqrt(sum_ik w'_ijk^2 + eps); upsampling as in
  the paper's code (a stride-2 transposed convolution, then the [1, 3, 3, 1] FIR filter with gain 4).
- R1: Mescheder et al., "Which Training Methods for GANs do actually Converge?" (ICML 2018): gamma / 2 *
  E ||grad_x D(x)||^2 on real data.
- Path-length regularisation: Karras et al. 2020, eq. 4: E (||J_w^T y||_2 - a)^2, y ~ N(0, I) / sqrt(HW) (the
  image-size normalisation of the paper's code), a the running mean of the lengths (decay 0.01).
- Generator EMA: StyleGAN2-ADA (Karras et al., NeurIPS 2020): beta = 0.5 ** (batch / min(ema_kimg * 1000,
  rampup * images seen before the batch)).
- ReStyle: Alaluf et al., "ReStyle: A Residual-Based StyleGAN Encoder via Iterative Refinement" (ICCV 2021),
  eq. 1-2: w_0 = the average latent, y_0 = G(w_0); w_{t+1} = w_t + E(x, y_t), y_{t+1} = G(w_{t+1}).
The scalings of the lazy regularisers in training (gamma / 2 * r1_every, pl_weight * pl_every) match
rosinality/stylegan2-pytorch @ bef283a1c24087da704d16c30abc8e36e63efa0e (train.py), read by hand.
"""

from __future__ import annotations

import math
import types

import pytest
import torch
import torch.nn.functional as F

from Engineering.Engines.WarpDrives.StyleGAN2.network.layers import ModulatedConv2d
from Engineering.Science.gan_losses import path_length_penalty, r1_penalty


def _style(layer: ModulatedConv2d, w: torch.Tensor) -> torch.Tensor:
    """s = A(w): the equalised-lr affine layer written out (weight / sqrt(fan_in), bias)."""
    a = layer.modulation
    return w @ (a.weight * a.lr_mul / math.sqrt(w.shape[1])).t() + a.bias * a.lr_mul


def _modulated_weights(layer: ModulatedConv2d, w: torch.Tensor, demodulate: bool) -> torch.Tensor:
    """(B, out, in, k, k): eq. 1 (modulation) and eq. 3 (demodulation) of the paper, element by element."""
    base = layer.weight[0].double() / math.sqrt(layer.in_ch * layer.k**2)  # equalised learning rate
    s = _style(layer, w).double()
    wp = base[None] * s[:, None, :, None, None]
    if demodulate:
        sigma = torch.sqrt((wp**2).sum(dim=(2, 3, 4), keepdim=True) + 1e-8)
        wp = wp / sigma
    return wp


def _conv_by_sums(x: torch.Tensor, wpp: torch.Tensor) -> torch.Tensor:
    """y[b, j] = sum_i sum_(u,v) w''[b, j, i, u, v] x[b, i, . + u - p, . + v - p] ('same' padding), via unfold."""
    b, c, h, w_ = x.shape
    k = wpp.shape[-1]
    patches = F.unfold(x.double(), k, padding=k // 2).view(b, c, k, k, h * w_)
    return torch.einsum("bjiuv,biuvp->bjp", wpp, patches).view(b, -1, h, w_)


def _upfirdn_naive(x: torch.Tensor, kernel: torch.Tensor, up: int, pad: tuple[int, int]) -> torch.Tensor:
    """Zero-insert, pad, true 2D convolution with ``kernel``, element by element (the paper code's definition)."""
    b, c, h, w = x.shape
    z = torch.zeros(b, c, h * up, w * up, dtype=x.dtype)
    z[..., ::up, ::up] = x
    z = F.pad(z, (pad[0], pad[1], pad[0], pad[1]))
    kh = kernel.shape[0]
    out = torch.zeros(b, c, z.shape[2] - kh + 1, z.shape[3] - kh + 1, dtype=x.dtype)
    kf = torch.flip(kernel, (0, 1)).to(x.dtype)
    for u in range(kh):
        for v in range(kh):
            out += kf[u, v] * z[..., u : u + out.shape[2], v : v + out.shape[3]]
    return out


@pytest.mark.parametrize("demodulate,k", [(True, 3), (False, 1), (True, 1)])
def test_modulated_convolution_is_the_papers_formula(demodulate, k):
    torch.manual_seed(0)
    layer = ModulatedConv2d(5, 4, k, style_dim=6, demodulate=demodulate)
    with torch.no_grad():  # a non-trivial affine layer (its bias starts at 1)
        layer.modulation.bias.normal_()
    x, w = torch.randn(3, 5, 7, 7), torch.randn(3, 6)
    want = _conv_by_sums(x, _modulated_weights(layer, w, demodulate))
    torch.testing.assert_close(layer(x, w).double(), want, rtol=1e-5, atol=1e-5)


def test_demodulation_restores_unit_output_variance():
    """The paper's reason for eq. 3: with i.i.d. unit-variance inputs every output channel has unit variance,
    whatever the style."""
    torch.manual_seed(1)
    layer = ModulatedConv2d(16, 8, 3, style_dim=4)
    x = torch.randn(2, 16, 96, 96)
    w = torch.randn(2, 4) * 3
    y = layer(x, w)[..., 1:-1, 1:-1]  # away from the zero padding
    std = y.double().std(dim=(2, 3))
    assert torch.allclose(std, torch.ones_like(std), atol=0.03), std


def test_modulated_upsampling_convolution_is_transposed_conv_then_fir():
    torch.manual_seed(2)
    layer = ModulatedConv2d(3, 2, 3, style_dim=4, upsample=True)
    x, w = torch.randn(2, 3, 5, 5), torch.randn(2, 4)
    wpp = _modulated_weights(layer, w, True)
    taps = torch.tensor([1.0, 3.0, 3.0, 1.0], dtype=torch.float64)
    fir = (taps[None] * taps[:, None]) / 64.0 * 4.0  # normalised, gain factor ** 2
    outs = []
    for b in range(2):
        # a stride-2 transposed convolution = the full convolution of the zero-inserted input with the kernel
        z = torch.zeros(1, 3, 9, 9, dtype=torch.float64)
        z[..., ::2, ::2] = x[b : b + 1].double()
        kernel = wpp[b]  # (out, in, k, k)
        full = F.conv2d(F.pad(z, (2, 2, 2, 2)), torch.flip(kernel, (2, 3)))
        p = (4 - 2) - (3 - 1)
        outs.append(_upfirdn_naive(full, fir, 1, ((p + 1) // 2 + 1, p // 2 + 1)))
    torch.testing.assert_close(layer(x, w).double(), torch.cat(outs), rtol=1e-5, atol=1e-5)
    assert layer(x, w).shape[-1] == 10


def test_r1_is_the_squared_gradient_norm_of_d_on_real_data():
    """A discriminator with a closed-form input gradient: D(x) = <v, x> + 0.5 <c, x^2>, grad = v + c x."""
    g = torch.Generator().manual_seed(3)
    v, c = torch.randn(2, 4, 4, generator=g), torch.randn(2, 4, 4, generator=g)
    x = torch.randn(5, 2, 4, 4, generator=g).requires_grad_(True)
    logits = (x * v).sum((1, 2, 3)) + 0.5 * (c * x**2).sum((1, 2, 3))
    want = ((v + c * x.detach()) ** 2).sum((1, 2, 3)).mean()
    got = r1_penalty(logits, x)
    assert float(got.detach()) == pytest.approx(float(want), rel=1e-6)
    gamma = 10.0  # the training loss's gamma / 2 * R1 (Mescheder et al.'s definition)
    assert gamma / 2 * float(got.detach()) == pytest.approx(gamma / 2 * float(want), rel=1e-6)


def test_path_length_penalty_with_a_linear_generator():
    """img = sum_l M_l w_l: J_{w_l}^T y = M_l^T y, so the length is sqrt(mean_l ||M_l^T y||^2)."""
    g = torch.Generator().manual_seed(4)
    b, n_lat, d, c, h = 3, 2, 5, 2, 4
    m = torch.randn(n_lat, c * h * h, d, generator=g)
    ws = torch.randn(b, n_lat, d, generator=g).requires_grad_(True)
    img = torch.einsum("lpd,bld->bp", m, ws).view(b, c, h, h)
    torch.manual_seed(7)
    penalty, new_mean, lengths = path_length_penalty(img, ws, torch.tensor(0.8), decay=0.01)
    torch.manual_seed(7)
    y = torch.randn(b, c, h, h) / math.sqrt(h * h)  # the same draw: N(0, I) / sqrt(H W)
    jty = torch.einsum("lpd,bp->bld", m, y.view(b, -1))
    want_len = jty.pow(2).sum(2).mean(1).sqrt()
    want_mean = 0.8 + 0.01 * (want_len.mean() - 0.8)
    torch.testing.assert_close(lengths.detach(), want_len, rtol=1e-5, atol=1e-6)
    assert float(new_mean) == pytest.approx(float(want_mean), rel=1e-6)
    assert float(penalty.detach()) == pytest.approx(float(((want_len - want_mean) ** 2).mean()), rel=1e-5)


def test_generator_ema_is_stylegan2_adas():
    """Five updates of a one-parameter generator, batch 4, half-life 0.01 kimg, ramp-up 0.5: beta of each step
    from StyleGAN2-ADA's training loop (its cur_nimg is the images before the batch), against the engine's."""
    from Engineering.Engines.WarpDrives.StyleGAN2.engine import StyleGANEngine

    net, ema = torch.nn.Linear(1, 1, bias=False), torch.nn.Linear(1, 1, bias=False)
    ema.weight.data.fill_(5.0)
    fake = types.SimpleNamespace(
        cfg=types.SimpleNamespace(training=types.SimpleNamespace(batch_size=4)),
        k=types.SimpleNamespace(ema_kimg=0.01, ema_rampup=0.5),
        net=net,
        ema_net=ema,
        n_images=torch.tensor(0),
        world_size=lambda: 1,
    )
    want, cur_nimg = 5.0, 0
    for step in range(5):
        net.weight.data.fill_(float(step + 1))
        # StyleGAN2-ADA: ema_nimg = min(ema_kimg * 1000, cur_nimg * rampup); beta = 0.5 ** (batch / ema_nimg)
        ema_nimg = min(0.01 * 1000, cur_nimg * 0.5)
        beta = 0.5 ** (4 / max(ema_nimg, 1e-8))
        want = (step + 1) + (want - (step + 1)) * beta  # lerp(p, p_ema, beta)
        cur_nimg += 4
        fake.n_images = torch.tensor(cur_nimg)  # the engine counts the batch before it updates the EMA
        StyleGANEngine.update_ema(fake)
        assert float(ema.weight.detach()) == pytest.approx(want, rel=1e-6), step
    assert cur_nimg == 20


def test_restyle_refinement_is_residual_from_the_average_latent():
    from Engineering.Engines.WarpDrives.ReStyle.network import ReStyleConfig, ReStyleNet
    from Engineering.Engines.WarpDrives.StyleGAN2.network import Generator, StyleGAN2Config

    torch.manual_seed(5)
    gen = Generator(StyleGAN2Config(size=32, channels=2, style_dim=8, n_mlp=2, channel_max=8))
    with torch.no_grad():
        gen.w_avg.normal_()
    net = ReStyleNet(ReStyleConfig(width=4, blocks=(1, 1, 1, 1), n_iters=3, noise_head=False), gen).eval()
    x = torch.randn(2, 2, 32, 32)
    with torch.no_grad():
        steps = net.invert(x)
        noise = [getattr(net, f"fixed_noise_{i}").expand(2, -1, -1, -1) for i in range(gen.cfg.n_noise)]
        w = gen.w_avg[None, None].expand(2, gen.n_latent, -1)  # w_0: the average latent in every slot
        y = gen.synthesis(w, noise)  # y_0 = G(w_0)
        for t in range(3):
            delta, _ = net.encoder(x, y)  # E(x, y_t): the image and the current reconstruction
            w = w + delta  # w_{t+1} = w_t + delta
            y = gen.synthesis(w, noise)  # y_{t+1} = G(w_{t+1})
            torch.testing.assert_close(steps[t][0], w, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(steps[t][2], y, rtol=1e-4, atol=1e-5)
    assert len(steps) == 3
