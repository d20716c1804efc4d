"""The IID predictor drive and CutMix on images and latents: every --noise/--style combination trains, alpha
starts at 0 (the ERM baseline), ArcFace's margin, and one box for the image and its noise maps."""

import math

import pytest
import torch
import torch.nn.functional as F

from Engineering.Engines.WarpDrives.IID.network import IIDConfig, IIDConfigError, IIDNet
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
    return IIDNet(
        IIDConfig(
            in_channels=3,
            n_classes=2,
            width=8,
            use_noise=use_noise,
            use_style=use_style,
            n_latent=N_LAT,
            style_dim=SD,
            emb_dim=16,
            **kw,
        )
    )


@pytest.mark.parametrize("use_noise,use_style", [(False, False), (True, False), (False, True), (True, True)])
@pytest.mark.parametrize("use_cutmix", [False, True])
def test_each_combination_trains(use_noise, use_style, use_cutmix):
    m = net(use_noise, use_style)
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    x, codes, noise, y = batch()
    g = torch.Generator().manual_seed(1)
    losses = []
    for _ in range(25):
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


@pytest.mark.parametrize(
    "bad,match",
    [
        ({"n_classes": 1}, "n_classes"),
        ({"depth": 50}, "depth"),
        ({"use_style": True, "n_latent": 0}, "n_latent"),
        ({"dropout": 1.0}, "dropout"),
        ({"in_channels": 0}, "in_channels"),
    ],
)
def test_config_errors_name_the_field(bad, match):
    with pytest.raises(IIDConfigError, match=match):
        IIDConfig(**{"n_latent": 4, "style_dim": 4, **bad})


def torchvision_resnet_state(depth: int = 18, seed: int = 0) -> dict:
    """Random tensors with the names and shapes of torchvision's resnet18 / resnet34 state dicts (its published
    layout: conv1, bn1, layer1-4 of BasicBlocks with downsample.0/1 where a stage starts, fc), built without
    torchvision (whose wheels do not import beside this CPU torch)."""
    g = torch.Generator().manual_seed(seed)
    st = {}

    def conv(name, *shape):
        st[name] = torch.randn(*shape, generator=g) * (2.0 / (shape[1] * shape[2] * shape[3])) ** 0.5

    def bn(prefix, c):
        st.update(
            {
                f"{prefix}.weight": torch.rand(c, generator=g) + 0.5,
                f"{prefix}.bias": torch.randn(c, generator=g),
                f"{prefix}.running_mean": torch.randn(c, generator=g) * 0.1,
                f"{prefix}.running_var": torch.rand(c, generator=g) + 0.5,
                f"{prefix}.num_batches_tracked": torch.tensor(7),
            }
        )

    conv("conv1.weight", 64, 3, 7, 7)
    bn("bn1", 64)
    cin = 64
    for k, n in enumerate({18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}[depth]):
        cout = 64 * 2**k
        for j in range(n):
            pre = f"layer{k + 1}.{j}"
            conv(f"{pre}.conv1.weight", cout, cin if j == 0 else cout, 3, 3)
            bn(f"{pre}.bn1", cout)
            conv(f"{pre}.conv2.weight", cout, cout, 3, 3)
            bn(f"{pre}.bn2", cout)
            if j == 0 and k:
                conv(f"{pre}.downsample.0.weight", cout, cin, 1, 1)
                bn(f"{pre}.downsample.1", cout)
        cin = cout
    st["fc.weight"], st["fc.bias"] = torch.randn(1000, 512, generator=g), torch.randn(1000, generator=g)
    return st


def reference_resnet_features(st: dict, x: torch.Tensor, blocks) -> torch.Tensor:
    """The ImageNet BasicBlock ResNet (He et al., CVPR 2016) in eval mode straight from the state dict's tensors:
    7x7/2 conv, BN, ReLU, 3x3/2 max pool, residual stages, global average pooling."""

    def bn(h, pre):
        return F.batch_norm(
            h,
            st[f"{pre}.running_mean"],
            st[f"{pre}.running_var"],
            st[f"{pre}.weight"],
            st[f"{pre}.bias"],
            False,
            0.0,
            1e-5,
        )

    h = F.max_pool2d(F.relu(bn(F.conv2d(x, st["conv1.weight"], stride=2, padding=3), "bn1")), 3, 2, 1)
    for k, n in enumerate(blocks):
        for j in range(n):
            pre, stride = f"layer{k + 1}.{j}", 2 if (j == 0 and k) else 1
            y = F.relu(bn(F.conv2d(h, st[f"{pre}.conv1.weight"], stride=stride, padding=1), f"{pre}.bn1"))
            y = bn(F.conv2d(y, st[f"{pre}.conv2.weight"], padding=1), f"{pre}.bn2")
            skip = (
                bn(F.conv2d(h, st[f"{pre}.downsample.0.weight"], stride=stride), f"{pre}.downsample.1")
                if f"{pre}.downsample.0.weight" in st
                else h
            )
            h = F.relu(y + skip)
    return h.mean((2, 3))


def features(m: IIDNet, x: torch.Tensor) -> torch.Tensor:
    h = m.stem(x)
    for stage in m.stages:
        h = stage(h)
    return h.mean((2, 3))


@pytest.mark.parametrize("channels", [1, 3, 6])
def test_imagenet_stem_takes_any_channel_count_with_noise_and_style(channels):
    torch.manual_seed(0)
    m = IIDNet(
        IIDConfig(
            in_channels=channels,
            n_classes=3,
            stem="imagenet",
            use_noise=True,
            use_style=True,
            n_latent=N_LAT,
            style_dim=SD,
            emb_dim=16,
        )
    )
    x, codes, noise, _ = batch(4)
    out = m(x[:, :1].repeat(1, channels, 1, 1), codes, noise)
    assert out["logits"].shape == (4, 3) and out["emb"].shape == (4, 16)
    assert [inj.alpha.shape[1] for inj in m.inject] == [64, 128, 256, 512]  # torchvision's stage widths


@pytest.mark.parametrize("depth", [18, 34])
@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_local_torchvision_weights_give_the_reference_network(tmp_path, suffix, depth):
    """Loaded from a file, the backbone computes the reference ResNet of those tensors; a 1-channel net's stem
    sums the RGB filters (a grey image gives the RGB net's response to that grey on all three channels) and a
    6-channel one repeats them at 3/6."""
    from safetensors.torch import save_file

    from Engineering.io.checkpoints import read_checkpoint

    state = torchvision_resnet_state(depth)
    path = tmp_path / f"resnet{depth}{suffix}"
    if suffix == ".pth":
        torch.save(state, path)
    else:
        save_file(state, str(path))
    loaded = read_checkpoint(path)["state_dict"]
    nets = {}
    for c in (1, 3, 6):
        nets[c] = IIDNet(IIDConfig(in_channels=c, n_classes=2, depth=depth, stem="imagenet", emb_dim=16)).eval()
        info = nets[c].load_torchvision_weights(loaded)
        assert info["tensors"] == len(state) - 2 and info["dropped"] == ["fc.bias", "fc.weight"]
        assert info["conv1_adapted"] == (c != 3)
    x = torch.randn(2, 3, 64, 64)
    grey = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        want = reference_resnet_features(state, x, IIDConfig(depth=depth).blocks)
        torch.testing.assert_close(features(nets[3], x), want, rtol=1e-3, atol=1e-4)
        rgb_grey = features(nets[3], grey.repeat(1, 3, 1, 1))
        torch.testing.assert_close(features(nets[1], grey), rgb_grey, rtol=1e-3, atol=1e-4)
        torch.testing.assert_close(features(nets[6], grey.repeat(1, 6, 1, 1)), rgb_grey, rtol=1e-3, atol=1e-4)


def test_weights_that_do_not_fit_are_refused():
    m = IIDNet(IIDConfig(in_channels=3, n_classes=2, stem="imagenet", emb_dim=16))
    r34 = torchvision_resnet_state(34)
    with pytest.raises(IIDConfigError, match="lacks, e.g. layer1.2.conv1.weight"):  # a resnet34 is not a resnet18
        m.load_torchvision_weights(r34)
    with pytest.raises(IIDConfigError, match=r"the weights lack \d+ resnet18 tensor\(s\), e.g. layer1.0.conv1.weight"):
        m.load_torchvision_weights({k: v for k, v in r34.items() if not k.startswith(("layer4", "layer1"))})
    good = torchvision_resnet_state(18)
    good["layer2.0.conv1.weight"] = r34["layer3.0.conv1.weight"]
    with pytest.raises(IIDConfigError, match="layer2.0.conv1.weight has shape"):
        m.load_torchvision_weights(good)
    with pytest.raises(IIDConfigError, match="width 64"):
        IIDNet(IIDConfig(in_channels=3, n_classes=2, width=32, stem="imagenet", emb_dim=16)).load_torchvision_weights(
            torchvision_resnet_state(18)
        )
    with pytest.raises(IIDConfigError, match="imagenet stem"):
        IIDNet(IIDConfig(in_channels=3, n_classes=2, width=8, emb_dim=16)).load_torchvision_weights(good)
    with pytest.raises(IIDConfigError, match="stem must be one of small, imagenet"):
        IIDConfig(stem="vit")


def _report(tmp_path, classes, predicted, split):
    """OODReport.run on a saved embedding table and a stand-in model that predicts ``predicted`` (class names)."""
    import types

    import numpy as np
    import pandas as pd

    from Engineering.Engines.WarpDrives.IID.engine import OODReport

    n = len(predicted)
    ids = [f"p{i}" for i in range(n)]
    emb = pd.DataFrame(
        {
            "patientID": ids,
            "fieldID": "f",
            "instanceID": "0",
            "key": "primary",
            "c": 0,
            "t": 0,
            "s": 0,
            "Z0": np.zeros(n, dtype=np.float32),
        }
    )
    emb.to_parquet(tmp_path / "emb.parquet")
    position = {c: k for k, c in enumerate(classes)}
    proba = np.zeros((n, len(classes)))
    proba[np.arange(n), [position[c] for c in predicted]] = 1.0
    model = types.SimpleNamespace(
        predict_from_embeddings=lambda e: proba,
        classes=classes,
        labels=dict(zip(ids, predicted)),
        k=types.SimpleNamespace(use_noise=False, use_style=False, loss_coef=0.0),
    )
    dm = types.SimpleNamespace(
        group_of={p: "g" for p in ids},
        ood_test={p for p, s in zip(ids, split) if s == "ood"},
        test_groups={"g"},
        val_groups=set(),
    )
    cfg = types.SimpleNamespace(model=types.SimpleNamespace(IID=types.SimpleNamespace(targets="y", ood_column="g")))
    OODReport().run(cfg, model, dm, tmp_path)
    return {s: (tmp_path / f"wilds_{s}_test_pred.csv").read_text().split() for s in ("id", "ood")}


def test_wilds_files_hold_the_class_label_not_its_position_among_names_sorted_as_strings(tmp_path):
    """rxrx1's 1,139 siRNA classes 0..1138: sorted as strings (the classifier's output order) class "2" is at
    position 251; the WILDS file must say 2 (issue 33: it said 251)."""
    classes = sorted(str(i) for i in range(1139))
    assert classes.index("2") == 251
    files = _report(tmp_path, classes, ["2", "1138", "10", "0"], ["ood", "ood", "id", "id"])
    assert files == {"ood": ["2", "1138"], "id": ["10", "0"]}
    assert not (tmp_path / "wilds_classes.csv").exists()


def test_wilds_files_of_named_classes_hold_positions_with_their_key(tmp_path):
    import pandas as pd

    classes = ["mutant", "wild_type"]
    files = _report(tmp_path, classes, ["wild_type", "mutant", "wild_type"], ["ood", "id", "id"])
    assert files == {"ood": ["1"], "id": ["0", "1"]}
    key = pd.read_csv(tmp_path / "wilds_classes.csv")
    assert key.to_dict("list") == {"index": [0, 1], "class": classes}
