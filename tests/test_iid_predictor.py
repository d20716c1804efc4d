"""The IID predictor drive and CutMix on images and latents: every --noise/--style combination trains, alpha
starts at 0 (the ERM baseline), ArcFace's margin, and one box for the image and its noise maps."""
import math

import pytest
import torch
import torch.nn.functional as F

from Engineering.Engines.WarpDrives.IID import IIDConfig, IIDConfigError, IIDNet
from Engineering.Science.cutmix import cutmix

N_LAT, SD, SIZE = 8, 16, 32
NOISE_SIZES = [4, 8, 8, 16, 16, 32, 32]


def batch(n=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    x = torch.randn(n, 3, SIZE, SIZE, generator=g) + y.view(-1, 1, 1, 1) * 0.5
    codes = torch.randn(n, N_LAT, SD, generator=g) + y.view(-1, 1, 1) * 0.5
    noise = [torch.randn(n, 1, s, s, generator=g) for s in NOISE_SIZES]
    return x, codes, noise, y


def net(use_noise, use_style, **kw):
    torch.manual_seed(0)
    return IIDNet(IIDConfig(in_channels=3, n_classes=2, width=8, use_noise=use_noise, use_style=use_style,
                            n_latent=N_LAT, style_dim=SD, emb_dim=16, **kw))


@pytest.mark.parametrize("use_noise,use_style", [(False, False), (True, False), (False, True), (True, True)])
@pytest.mark.parametrize("use_cutmix", [False, True])
def test_each_combination_trains(use_noise, use_style, use_cutmix):
    m = net(use_noise, use_style)
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    x, codes, noise, y = batch()
    g = torch.Generator().manual_seed(1)
    losses = []
    for step in range(25):
        xb, cb, nb, yb, lam, perm = x, codes, noise, y, 1.0, None
        if use_cutmix:
            xb, cb, nb, perm, lam = cutmix(x, codes, noise, generator=g)
        out = m(xb, cb if use_style else None, nb if use_noise else None)

        def loss_of(target):
            ce = F.cross_entropy(out["logits"], target)
            arc = F.cross_entropy(m.arcface_logits(out["cos"], target), target)
            return 0.5 * ce + 0.5 * arc

        loss = loss_of(yb) if perm is None else lam * loss_of(yb) + (1 - lam) * loss_of(yb[perm])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    m.eval()
    with torch.no_grad():
        out = m(x, codes if use_style else None, noise if use_noise else None)
    assert out["emb"].shape == (8, 16) and out["logits"].shape == (8, 2) and out["cos"].shape == (8, 2)
    assert sum(losses[-5:]) < sum(losses[:5]), losses
    if use_noise:
        assert all(inj.alpha.abs().sum() > 0 for inj in m.inject)  # the injection strengths moved from 0


def test_noise_injection_starts_as_the_baseline():
    with_noise, baseline = net(True, False).eval(), net(False, False).eval()
    baseline.load_state_dict({k: v for k, v in with_noise.state_dict().items() if not k.startswith("inject")})
    x, _, noise, _ = batch()
    with torch.no_grad():
        assert torch.allclose(with_noise(x, noise=noise)["logits"], baseline(x)["logits"])
    with pytest.raises(ValueError, match="noise"):
        with_noise(x)
    with pytest.raises(ValueError, match="codes"):
        net(False, True)(x)


def test_arcface_margin():
    m = net(False, False, arcface_m=0.5, arcface_s=30.0)
    cos = torch.tensor([[0.8, 0.1], [-0.99, 0.3]])
    out = m.arcface_logits(cos, torch.tensor([0, 0]))
    assert torch.isclose(out[0, 0], 30 * torch.cos(torch.acos(torch.tensor(0.8)) + 0.5))
    assert torch.isclose(out[0, 1], torch.tensor(3.0)) and torch.isclose(out[1, 1], torch.tensor(9.0))
    # past theta = pi - m the fallback keeps the target logit below the plain cosine
    assert torch.isclose(out[1, 0], 30 * torch.tensor(-0.99 - 0.5 * math.sin(0.5)))


def test_cutmix_mixes_images_noise_and_codes_with_one_box():
    x, codes, noise, _ = batch()
    xm, cm, nm, perm, lam = cutmix(x, codes, noise, generator=torch.Generator().manual_seed(3))
    assert 0 < lam < 1
    i = int(torch.nonzero(perm != torch.arange(8))[0])  # a sample mixed with another one
    box = (xm[i] != x[i]).any(0)
    rows, cols = box.any(1), box.any(0)
    assert torch.equal(box, rows[:, None] & cols[None, :])  # one rectangle ...
    assert abs(box.float().mean().item() - (1 - lam)) < 1e-6  # ... whose area is what the labels are weighted by
    assert torch.equal(xm[i][:, box], x[perm[i]][:, box]) and torch.equal(xm[i][:, ~box], x[i][:, ~box])
    r = rows.nonzero().flatten()
    for n, nmix in zip(noise, nm):  # the same box at each noise map's resolution
        s = n.shape[-1] / SIZE
        changed = (nmix[i, 0] != n[i, 0]).any(1).nonzero().flatten()
        if len(changed):
            assert abs(changed.min().item() - r.min().item() * s) <= 1
            assert abs(changed.max().item() + 1 - (r.max().item() + 1) * s) <= 1
    assert torch.allclose(cm, lam * codes + (1 - lam) * codes[perm])


@pytest.mark.parametrize("bad,match", [({"n_classes": 1}, "n_classes"), ({"depth": 50}, "depth"),
                                       ({"use_style": True, "n_latent": 0}, "n_latent"),
                                       ({"dropout": 1.0}, "dropout"), ({"in_channels": 0}, "in_channels")])
def test_config_errors_name_the_field(bad, match):
    with pytest.raises(IIDConfigError, match=match):
        IIDConfig(**{"n_latent": 4, "style_dim": 4, **bad})
