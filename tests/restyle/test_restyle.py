"""The ReStyle encoder drive: code and noise-map shapes, the residual refinement from the average latent, a frozen
generator, and a falling loss over a few steps."""

import pytest
import torch

from Engineering.Engines.WarpDrives.ReStyle.network import ReStyleConfig, ReStyleConfigError, ReStyleNet
from Engineering.Engines.WarpDrives.StyleGAN2.network import Generator, StyleGAN2Config


def tiny_net(size=32, channels=1, **kw):
    torch.manual_seed(0)
    g = Generator(StyleGAN2Config(size=size, channels=channels, style_dim=32, n_mlp=2, channel_max=16))
    return ReStyleNet(ReStyleConfig(blocks=(1, 1, 1, 1), width=8, **kw), g)


@pytest.mark.parametrize("backbone", ["irse", "resnet"])
@pytest.mark.parametrize("size,channels", [(32, 1), (64, 3)])
def test_codes_and_noise_maps_have_the_generator_shapes(backbone, size, channels):
    net = tiny_net(size, channels, backbone=backbone)
    g = net.generator
    x = torch.randn(2, channels, size, size)
    steps = net.invert(x, n_iters=2)
    assert len(steps) == 2
    codes, noise, y = steps[-1]
    assert codes.shape == (2, g.n_latent, 32) and y.shape == x.shape
    assert [tuple(n.shape) for n in noise] == [(2, 1, s, s) for s in g.cfg.noise_sizes()]
    off = tiny_net(size, channels, backbone=backbone, noise_head=False)
    c_off, n_off, y_off = off.invert(x)[-1]
    assert n_off is None and c_off.shape == codes.shape
    assert torch.equal(y_off, off.invert(x)[-1][2])  # fixed noise: deterministic reconstructions


def test_refinement_starts_at_the_average_latent_and_adds_residuals():
    net = tiny_net()
    net.generator.w_avg.copy_(torch.randn(32))
    x = torch.randn(3, 1, 32, 32)
    codes0, y0 = net.start(3)
    assert torch.equal(codes0[1, 4], net.generator.w_avg)
    assert torch.allclose(y0[0], net.generator.synthesis(codes0[:1], net.fixed_noise(1))[0])
    delta, _ = net.encoder(x, y0)
    codes1, _, _ = net.step(x, codes0, y0)
    assert torch.allclose(codes1, codes0 + delta)


def test_encoder_loss_falls_with_a_frozen_generator():
    net = tiny_net()
    g_before = {k: v.clone() for k, v in net.generator.state_dict().items()}
    with torch.no_grad():  # targets the generator can reach: its own images of random codes
        x = net.generator(torch.randn(8, 32), noise=net.fixed_noise(8))
    opt = torch.optim.Adam(net.encoder.parameters(), lr=1e-3)
    net.train()
    assert not net.generator.training
    losses = []
    for _ in range(30):
        opt.zero_grad()
        loss = sum(((y - x) ** 2).mean() for _, _, y in net.invert(x, n_iters=2))
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5, losses
    assert all(p.grad is None for p in net.generator.parameters())
    assert all(torch.equal(v, g_before[k]) for k, v in net.generator.state_dict().items())


@pytest.mark.parametrize(
    "bad,match",
    [
        ({"backbone": "vit"}, "backbone"),
        ({"blocks": (1, 1)}, "blocks"),
        ({"n_iters": 0}, "n_iters"),
        ({"width": 0}, "width"),
    ],
)
def test_config_errors_name_the_field(bad, match):
    with pytest.raises(ReStyleConfigError, match=match):
        ReStyleConfig(**bad)
