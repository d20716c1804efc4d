"""The benchmark's model-dependent metric families recover planted answers: arbitrary-angle rotation invariance
(an exactly invariant encoder vs a pixel encoder, 2D and 3D), pose equivariance (a correct and a frozen pose),
the decoded path ratio and interpolation distance (a linear vs a curved decoder), latent usage (a decoder that uses the
code vs one that ignores it), rotations of point clouds, outliers by intrinsic dimension, and archetypes of data
built from known vertices."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from Engineering.Eval.archetypes import archetype_r2, fit_archetypes
from Engineering.Eval.interpolation import interpolation_metrics
from Engineering.Eval.latent_usage import IGNORED, latent_usage
from Engineering.Eval.outliers import outlier_auroc
from Engineering.Eval.rotation import (
    ball_mask,
    pose_equivariance_error,
    random_rotations,
    rotate,
    rotate_points,
    rotation_invariance,
)


def _images(dim: int, n: int = 12, size: int = 16, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = gaussian_filter(rng.normal(size=(n, 1, *[size] * dim)), (0, 0, *[1.5] * dim)) * 10
    return x.astype(np.float32)


def _radial_profile(x: np.ndarray, dim: int) -> np.ndarray:
    """Mean intensity in rings / shells around the centre: invariant to any rotation (up to interpolation)."""
    size = x.shape[-1]
    r = np.sqrt(sum(g**2 for g in np.meshgrid(*[np.arange(size) - (size - 1) / 2] * dim, indexing="ij")))
    bins = np.minimum((r / (size / 2) * 4).astype(int), 3)
    flat = x.reshape(len(x), -1)
    return np.stack([flat[:, bins.ravel() == b].mean(1) for b in range(4)], 1)


@pytest.mark.parametrize("dim", [2, 3])
def test_rotation_invariance_separates_an_invariant_from_a_pixel_encoder(dim):
    x = _images(dim)
    inv = rotation_invariance(lambda a: _radial_profile(a, dim), x, dim, n_boot=200, seed=0)
    pix = rotation_invariance(lambda a: a.reshape(len(a), -1), x, dim, n_boot=200, seed=0)
    assert inv.value < 0.1 and pix.value > 0.5, (inv.value, pix.value)
    assert inv.ci_low <= inv.value <= inv.ci_high and inv.direction == "lower"


def test_rotate_follows_the_grid_groups_convention():
    """A quarter turn by the matrix [[0, -1], [1, 0]] is exactly the C4 element with that matrix."""
    import torch

    from Engineering.Engines.WarpDrives.RotInv.network import c4

    x = _images(2, n=2)
    rot = np.array([[0.0, -1.0], [1.0, 0.0]])
    g = c4()
    k = [i for i, m in enumerate(g.mats) if np.array_equal(m, rot.astype(int))][0]
    np.testing.assert_allclose(rotate(x, rot), g.act(k, torch.from_numpy(x)).numpy(), atol=1e-5)
    assert random_rotations(3, 5, 0).shape == (5, 3, 3)
    np.testing.assert_allclose(np.linalg.det(random_rotations(3, 5, 0)), 1.0, atol=1e-9)


def test_pose_equivariance_error_is_zero_for_a_true_pose_and_large_for_a_frozen_one():
    """Planted pose: each image is a rotated copy of one asymmetric pattern; the true pose function reads the
    angle back from the image's intensity-weighted principal axis... known exactly here by construction."""
    base = np.zeros((1, 1, 17, 17), np.float32)
    base[0, 0, 8, 3:15] = 1.0
    base[0, 0, 6:11, 13] = 1.0  # an arrow: its direction is the pose
    base = gaussian_filter(base, (0, 0, 1, 1)) * ball_mask((17, 17))
    angles = np.linspace(0, 300, 6)
    rots = np.stack([[[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]] for a in np.radians(angles)])
    x = np.concatenate([rotate(base, r) for r in rots])

    def true_pose(imgs):
        """The rotation that best maps the base pattern onto each image (search over 1-degree steps)."""
        cands = np.radians(np.arange(0, 360, 1.0))
        mats = np.stack([[[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]] for a in cands])
        templates = np.concatenate([rotate(base, m) for m in mats]).reshape(len(cands), -1)
        best = np.argmax(imgs.reshape(len(imgs), -1) @ templates.T, axis=1)
        return mats[best]

    good = pose_equivariance_error(true_pose, x, 2, n_boot=100, seed=0)
    frozen = pose_equivariance_error(lambda imgs: np.repeat(np.eye(2)[None], len(imgs), 0), x, 2, n_boot=100, seed=0)
    assert good.value < 3.0 and frozen.value > 30.0, (good.value, frozen.value)


def test_decoded_path_ratio_is_one_for_a_linear_decoder_and_more_for_a_curved_one():
    rng = np.random.default_rng(0)
    Z = rng.normal(size=(20, 3))
    W = rng.normal(size=(3, 10))
    linear = lambda z: z @ W  # noqa: E731 - straight decoded paths
    curved = lambda z: np.concatenate([z @ W, 3 * np.sin(2 * z)], 1)  # noqa: E731
    X_lin, X_cur = linear(Z), curved(Z)
    lin = interpolation_metrics(linear, Z, X_lin, n_boot=100, seed=0)
    cur = interpolation_metrics(curved, Z, X_cur, n_boot=100, seed=0)
    assert lin["decoded_path_ratio"].value == pytest.approx(1.0, abs=1e-9)
    assert cur["decoded_path_ratio"].ci_low > 1.05  # a detour: the whole CI above the straight path's 1
    # interpolants of the curved decoder leave the data more than the linear decoder's (which stay in its span)
    assert cur["interpolation_distance"].value > lin["interpolation_distance"].value


def test_intrinsic_dimension_finds_planted_outliers():
    rng = np.random.default_rng(0)
    plane = rng.normal(size=(300, 2)) @ rng.normal(size=(2, 10))  # inliers: a 2D plane in 10D
    out = rng.normal(size=(15, 10)) * plane.std()
    Z = np.concatenate([plane, out])
    y = np.r_[np.zeros(300), np.ones(15)]
    res = outlier_auroc(Z, y, n_boot=50, seed=0)
    assert res.value > 0.9 and res.chance == 0.5, res.value
    shuffled = outlier_auroc(Z, rng.permutation(y), n_boot=50, seed=0)
    assert abs(shuffled.value - 0.5) < 0.2
    assert outlier_auroc(Z, np.zeros(len(Z)), n_boot=10, seed=0).skipped


def test_archetypes_recover_the_vertices_data_were_built_from():
    from scipy.optimize import linear_sum_assignment

    rng = np.random.default_rng(1)
    vertices = rng.normal(size=(4, 6)) * 3
    weights = rng.dirichlet(np.full(4, 0.3), size=400)
    X = weights @ vertices + rng.normal(scale=0.02, size=(400, 6))
    Z, A = fit_archetypes(X, 4)
    cost = np.linalg.norm(Z[:, None] - vertices[None], axis=-1)
    rows, cols = linear_sum_assignment(cost)
    assert cost[rows, cols].max() < 0.5, cost[rows, cols]  # vertices spread ~4 apart
    np.testing.assert_allclose(A.sum(1), 1.0, atol=1e-6)
    assert (A >= -1e-12).all()
    r2 = archetype_r2(X, 4, n_boot=100, seed=0)
    assert r2.value > 0.97 and r2.ci_low <= r2.value <= r2.ci_high
    assert archetype_r2(X, 2, n_boot=0, seed=0).value < r2.value  # fewer archetypes explain less


def test_efficiency_counts_parameters_and_sees_a_heavier_model():
    import sys

    import torch

    from Engineering.Eval.efficiency import efficiency

    light = torch.nn.Linear(64, 8)

    class Heavy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.randn(64, 2048))

        def forward(self, x):
            big = torch.ones(len(x), 64, 2048 * 64)  # ~256 MiB written: a peak the RSS must show
            h = x @ self.w
            for _ in range(20):
                h = torch.tanh(h @ self.w.T @ self.w) / 64
            return h[:, :8] + big[:, 0, :8]

    x = torch.randn(8, 64)
    heavy = Heavy()
    a, b = efficiency(light, light, x), efficiency(heavy, heavy, x, co2_country="GBR")
    assert a["parameters_M"].value == pytest.approx((64 * 8 + 8) / 1e6)
    assert b["parameters_M"].value == pytest.approx(64 * 2048 / 1e6)
    assert b["inference_ms_per_sample"].value > 5 * a["inference_ms_per_sample"].value
    if sys.platform.startswith("linux"):
        assert b["inference_peak_MiB"].value > 150 and a["inference_peak_MiB"].value < 50
    # energy (codecarbon, a dev dependency; offline): the slower model costs more per sample; CO2 needs a grid
    assert b["inference_mJ_per_sample"].value > 3 * a["inference_mJ_per_sample"].value > 0
    assert b["inference_CO2_ug_per_sample"].value > 0 and "GBR" in b["inference_CO2_ug_per_sample"].note
    assert "--co2_country" in a["inference_CO2_ug_per_sample"].skipped


def test_latent_usage_is_about_one_for_a_decoder_of_the_code_and_zero_for_one_that_ignores_it():
    """Planted: x = W z + small noise. A decoder that renders W z_given uses the code (a swapped code reconstructs
    the other sample: usage ~1); one that returns x itself whatever the code (a UNet that reconstructs from x_T
    alone) does not (usage 0), and the note says so."""
    rng = np.random.default_rng(0)
    Z = rng.normal(size=(40, 4))
    W = rng.normal(size=(4, 64))
    X = Z @ W + rng.normal(0, 0.05, (40, 64))
    uses = latent_usage(lambda x, codes: [c @ W for c in codes], X, Z, X, n_boot=100, seed=0)
    ignores = latent_usage(lambda x, codes: [x + 0.01 for _ in codes], X, Z, X, n_boot=100, seed=0)
    assert 0.9 < uses["latent_usage_swap"].value < 1.1, uses["latent_usage_swap"].value
    # the mean code is about half as far as another sample's (E|z - mean|^2 vs E|z - z'|^2; per-sample ratios)
    assert 0.35 < uses["latent_usage_mean"].value < 0.85
    assert abs(ignores["latent_usage_swap"].value) < 1e-9 and abs(ignores["latent_usage_mean"].value) < 1e-9
    assert ignores["latent_usage_swap"].note.startswith("the decoder ignores the latent")
    assert not uses["latent_usage_swap"].note.startswith("the decoder ignores") and IGNORED > 0
    assert uses["latent_usage_swap"].direction == "higher"
    lo, hi = uses["latent_usage_swap"].ci_low, uses["latent_usage_swap"].ci_high
    assert lo < uses["latent_usage_swap"].value < hi


def test_point_clouds_are_rotated_exactly_and_scored_by_their_own_metric():
    """rotate_points turns xyz about the origin and keeps intensity; a centred-distance encoder is invariant
    (0) under random SO(3) rotations, raw coordinates are not; the covariance frame is an equivariant pose."""
    rng = np.random.default_rng(1)
    clouds = (rng.normal(size=(10, 3, 50)) * np.array([3.0, 2.0, 1.0])[None, :, None]).astype(np.float32)
    clouds = np.concatenate([clouds, rng.uniform(size=(10, 1, 50)).astype(np.float32)], 1)  # + intensity
    rot = random_rotations(3, 1, 0)[0]
    turned = rotate_points(clouds, rot)
    np.testing.assert_allclose(turned[:, :3], np.einsum("ij,njk->nik", rot, clouds[:, :3]), atol=1e-5)
    np.testing.assert_array_equal(turned[:, 3], clouds[:, 3])

    def radii(c):  # sorted distances to the centroid: invariant
        xyz = c[:, :3] - c[:, :3].mean(2, keepdims=True)
        return np.sort(np.linalg.norm(xyz, axis=1), 1)

    inv = rotation_invariance(radii, clouds, 3, 50, 0, kind="points")
    raw = rotation_invariance(lambda c: c[:, :3].reshape(len(c), -1), clouds, 3, 50, 0, kind="points")
    assert inv.value < 1e-5 and raw.value > 0.3, (inv.value, raw.value)

    def frame(c):  # principal axes, signs fixed by the third moment: pose(R x) = R pose(x)
        xyz = c[:, :3] - c[:, :3].mean(2, keepdims=True)
        out = []
        for p in xyz:
            _, vecs = np.linalg.eigh(p @ p.T)
            vecs = vecs * np.sign(((vecs.T @ p) ** 3).sum(1))[None]
            out.append(vecs * np.array([1, 1, np.linalg.det(vecs)]))
        return np.stack(out)

    assert pose_equivariance_error(frame, clouds, 3, 50, 0, kind="points").value < 1e-3  # degrees


def test_radar_z_scores_each_metric_over_the_runs_that_have_it():
    """Outward is better (a lower-is-better metric is flipped); a run without a metric (a decoder metric of an
    encoder-only model) is a gap, not a zero, and the others are z-scored among themselves."""
    from Engineering.Eval.plots import radar_axes, radar_chart
    from Engineering.Eval.result import HIGHER, LOWER, MetricResult

    def r(v, d=HIGHER):
        return MetricResult(v, v, v, d)

    results = {
        "a": {"acc": r(0.9), "err": r(1.0, LOWER), "dec": r(2.0, LOWER)},
        "b": {"acc": r(0.7), "err": r(3.0, LOWER), "dec": r(4.0, LOWER)},
        "c": {"acc": r(0.8), "err": r(2.0, LOWER), "dec": MetricResult.skip(LOWER, "no decoder")},
    }
    metrics, z = radar_axes(results)
    assert metrics == ["acc", "err", "dec"]
    np.testing.assert_allclose(z[:, 0], [np.sqrt(1.5), -np.sqrt(1.5), 0], atol=1e-12)
    np.testing.assert_allclose(z[:, 1], z[:, 0], atol=1e-12)  # lower error = outward
    np.testing.assert_allclose(z[:2, 2], [1, -1])
    assert np.isnan(z[2, 2])
    assert radar_chart(results)[:4] == b"\x89PNG"
