"""Point-cloud autoencoders and the Chamfer distance: the distance against a brute-force reference, symmetric and
zero for the same points in any order; both encoders invariant to the points' order; the Vector Neuron code
invariant to random rotations (and translations) with an equivariant frame and reconstruction; training lowers
the Chamfer loss; the Earth Mover's distance against the exact optimal matching (Hungarian algorithm)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from Engineering.Engines.WarpDrives.PointCloud.network import PointCloudAE, PointCloudConfig, PointCloudConfigError
from Engineering.Science.chamfer import chamfer_distance
from Engineering.Science.transport import earth_movers


def random_rotation(seed: int) -> torch.Tensor:
    """A random proper rotation: QR of a Gaussian matrix, signs fixed so the law is uniform, det +1."""
    g = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn(3, 3, generator=g, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r))
    if torch.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q.float()


def clouds(b=3, n=64, features=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    xyz = torch.randn(b, n, 3, generator=g) * torch.tensor([2.0, 1.0, 0.5])  # anisotropic: a frame exists
    if features == 4:
        return torch.cat([xyz, torch.rand(b, n, 1, generator=g) + 0.5], -1)
    return xyz


def test_chamfer_matches_brute_force_and_is_a_proper_discrepancy():
    a, b = clouds(2, 20), clouds(2, 30, seed=1)
    ref = []
    for x, y in zip(a.numpy().astype(np.float64), b.numpy().astype(np.float64)):
        d = ((x[:, None, :] - y[None, :, :]) ** 2).sum(-1)
        ref.append(d.min(1).mean() + d.min(0).mean())
    np.testing.assert_allclose(chamfer_distance(a, b).numpy(), ref, rtol=1e-5)
    torch.testing.assert_close(chamfer_distance(a, b), chamfer_distance(b, a))
    perm = torch.randperm(20)
    assert torch.allclose(chamfer_distance(a, a[:, perm]), torch.zeros(2), atol=1e-5)
    assert (chamfer_distance(a, a + 0.1) > 0).all()
    with pytest.raises(ValueError, match="needs"):
        chamfer_distance(a, b[..., :2])


@pytest.mark.parametrize("encoder", ["dgcnn", "vn"])
@pytest.mark.parametrize("features", [3, 4])
def test_encoders_ignore_the_order_of_points(encoder, features):
    torch.manual_seed(0)
    net = PointCloudAE(PointCloudConfig(encoder=encoder, in_features=features, k=8, width=8, latent_dim=8, grid=4))
    x = clouds(features=features)
    perm = torch.randperm(x.shape[1])
    with torch.no_grad():
        torch.testing.assert_close(net.encode(x[:, perm]), net.encode(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("features", [3, 4])
def test_vector_neuron_code_is_rotation_invariant_and_its_frame_equivariant(features):
    torch.manual_seed(0)
    net = PointCloudAE(PointCloudConfig(encoder="vn", in_features=features, k=8, width=8, latent_dim=8, grid=4))
    x = clouds(features=features)
    with torch.no_grad():
        base = net(x)
        for seed in range(5):
            rot, shift = random_rotation(seed), torch.randn(1, 1, 3)
            moved = x.clone()
            moved[..., :3] = x[..., :3] @ rot.T + shift
            out = net(moved)
            rel = (out["z"] - base["z"]).norm() / base["z"].norm()
            assert rel < 1e-4, (seed, float(rel))
            torch.testing.assert_close(out["frame"], base["frame"] @ rot.T, rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(out["recon"], base["recon"] @ rot.T + shift, rtol=1e-4, atol=1e-4)
            assert torch.allclose(out["frame"] @ out["frame"].transpose(1, 2), torch.eye(3).expand(3, 3, 3), atol=1e-5)
    dg = PointCloudAE(PointCloudConfig(encoder="dgcnn", k=8, width=8, latent_dim=8, grid=4))
    with torch.no_grad():  # the classical encoder is not invariant: the test above could fail
        moved = x[..., :3] @ random_rotation(0).T
        assert (dg.encode(moved) - dg.encode(x[..., :3])).norm() / dg.encode(x[..., :3]).norm() > 1e-2


@pytest.mark.parametrize("encoder", ["dgcnn", "vn"])
def test_autoencoder_training_lowers_the_chamfer_loss(encoder):
    torch.manual_seed(0)
    net = PointCloudAE(PointCloudConfig(encoder=encoder, k=8, width=8, latent_dim=8, grid=8))
    x = clouds(4, 64)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        out = net(x)
        assert out["recon"].shape == (4, 64, 3)
        loss = chamfer_distance(out["recon"], x[..., :3]).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert np.isfinite(losses).all() and losses[-1] < 0.6 * losses[0], losses[::10]


def test_bad_configs_are_named():
    for kw, match in (
        ({"encoder": "pointnet"}, "encoder must be one of dgcnn, vn"),
        ({"loss": "l2"}, "loss must be one of chamfer, emd"),
        ({"in_features": 5}, "in_features must be 3"),
        ({"k": 0}, "k"),
    ):
        with pytest.raises(PointCloudConfigError, match=match):
            PointCloudConfig(latent_dim=16, **kw)


def test_earth_movers_matches_the_exact_optimal_matching():
    """Reference: the squared 2-Wasserstein distance of two uniform N-point clouds is the mean squared distance of
    the best one-to-one matching, found exactly by scipy's Hungarian algorithm; the Sinkhorn estimate is within a
    few % (below it, by the entropic bias), 0 for the same points in any order, and symmetric."""
    from scipy.optimize import linear_sum_assignment

    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(3, 128, 3, generator=g) * 4, torch.randn(3, 128, 3, generator=g) * 4 + 1
    exact = []
    for i in range(3):
        cost = ((a[i][:, None] - b[i][None]) ** 2).sum(-1).numpy()
        rows, cols = linear_sum_assignment(cost)
        exact.append(cost[rows, cols].mean())
    emd = earth_movers(a, b).numpy()
    np.testing.assert_allclose(emd, exact, rtol=0.05)
    assert (emd <= np.array(exact) * 1.001).all()
    np.testing.assert_allclose(earth_movers(b, a).numpy(), emd, rtol=1e-3)
    assert float(earth_movers(a, a[:, torch.randperm(128, generator=g)]).abs().max()) < 1e-3
