"""AllenCell metrics against the reference (seed 003, issue 33 item 2).

The reference is AllenCell's benchmarking_representations at commit 60c6b7093945c05ba2f38d8ab580d63b0d76df57:
``src/br/features/rotation_invariance.py`` (get_equiv_dict, rotation_image_batch_z, rotation_pc_batch_z),
``src/br/features/evolve.py`` (model_pass_reconstruct, get_evolution_dict, distance_from_all),
``src/br/features/outlier_compactness.py`` (outlier_detection), and cyto-dl's ChamferLoss (the loss the reference
evaluates point clouds with; cyto_dl/nn/losses/chamfer_loss.py). The ``_ref_*`` functions below are ports of
those formulas written for this test (torch / scikit-learn as the reference uses them), independent of
Engineering/Eval. Each test also records, where the issue asked, the project's own variant on the same inputs.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter
from scipy.spatial.transform import Rotation
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_validate
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from Engineering.Eval import interpolation, invariance, outliers, rotation
from Engineering.Eval.latent_usage import mse

THETAS = (0, 90, 180, 270)


# ---------------------------------------------------------------- ports of the reference
def _ref_rotate_image(x: np.ndarray, theta: float) -> np.ndarray:
    """rotation_image_batch_z: an affine grid rotating about z (rotvec [0, 0, theta]), bilinear grid_sample."""
    t = torch.from_numpy(x).double()
    in_x = t.unsqueeze(1) if t.ndim == 4 else t
    mat = torch.from_numpy(Rotation.from_rotvec([0, 0, np.deg2rad(theta)]).as_matrix()).unsqueeze(0)
    A = torch.cat([mat.repeat(len(in_x), 1, 1), torch.zeros(len(in_x), 3, 1, dtype=torch.float64)], 2)
    grid = F.affine_grid(A, list(in_x.size()), align_corners=False)
    y = F.grid_sample(in_x, grid, align_corners=False)
    return (y.squeeze(1) if t.ndim == 4 else y).numpy()


def _ref_rotate_points(x: np.ndarray, theta: float) -> np.ndarray:
    """rotation_pc_batch_z: (B, N, 3+) clouds, xyz @ the z-rotation matrix; extra columns kept."""
    c, s = np.cos(np.deg2rad(theta)), np.sin(np.deg2rad(theta))
    r = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    return np.concatenate([x[:, :, :3] @ r, x[:, :, 3:]], -1)


def _ref_rotation_invariance_error(encode, batches, rotate) -> float:
    """get_equiv_dict: per batch and theta (0 included), ||z - baseline|| / (||baseline|| + ||z||) with numpy's
    matrix (Frobenius) norms; the reported metric is the mean of the rows."""
    values = []
    for batch in batches:
        for j, theta in enumerate(THETAS):
            z = encode(rotate(batch, theta))
            if j == 0:
                baseline = z
            values.append(np.linalg.norm(z - baseline) / (np.linalg.norm(baseline) + np.linalg.norm(z)))
    return float(np.mean(values))


def _ref_chamfer(gts: np.ndarray, preds: np.ndarray) -> np.ndarray:
    """cyto-dl ChamferLoss: cdist (p=2), min over each side, summed over points, added."""
    P = torch.cdist(torch.from_numpy(gts).double(), torch.from_numpy(preds).double(), p=2)
    return (P.min(1).values.sum(1) + P.min(2).values.sum(1)).numpy()


def _ref_evolution(decoder, loss_eval, Z, X, pairs, all_embeds=None) -> tuple[float, float]:
    """get_evolution_dict + model_pass_reconstruct (energy) + distance_from_all (closest_embedding_distance), mean
    over the (pair, fraction) rows."""
    all_embeds = Z if all_embeds is None else all_embeds
    energies, dists = [], []
    for a, b in pairs:
        init_x, final_x = X[a : a + 1], X[b : b + 1]
        for fraction in np.linspace(0, 1, 11):
            if fraction in [0, 1]:
                continue
            z = Z[a : a + 1] + (Z[b : b + 1] - Z[a : a + 1]) * fraction
            xhat = decoder(z)
            init_rcl = loss_eval(xhat, init_x).mean()
            final_rcl = loss_eval(xhat, final_x).mean()
            total_rcl = loss_eval(final_x, init_x).mean()
            energies.append((init_rcl + final_rcl) / total_rcl)
            dists.append(np.mean([np.sqrt(((all_embeds - z[i]) ** 2).sum(1)).min() for i in range(len(z))]))
    return float(np.mean(energies)), float(np.mean(dists))


def _ref_outlier_detection(Z: np.ndarray, outlier: np.ndarray) -> float:
    """outlier_detection: class weights n / (k n_i), standardise + logistic regression (max_iter 3000), 5 shuffled
    stratified folds (random_state 2652124), mean of the folds' balanced accuracies rounded to 2 decimals."""
    codes = outlier.astype(int)
    class_weight = {c: len(codes) / (len(np.unique(codes)) * (codes == c).sum()) for c in np.unique(codes)}
    model = make_pipeline(StandardScaler(), LogisticRegression(class_weight=class_weight, max_iter=3000))
    cv = cross_validate(
        model,
        Z,
        codes,
        cv=StratifiedKFold(n_splits=5, shuffle=True, random_state=2652124),
        scoring=["balanced_accuracy"],
    )
    return float(np.mean([round(v, 2) for v in cv["test_balanced_accuracy"]]))


# ---------------------------------------------------------------- data and models
def _images(dim: int, n: int = 12, size: int = 12, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = gaussian_filter(rng.normal(size=(n, 1, *[size] * dim)), (0, 0, *[1.0] * dim)) * 10
    return x.astype(np.float64)


def _pixel_encoder(n_in: int, dim_z: int = 6, seed: int = 1):
    """A fixed random nonlinear encoder of the flattened input: far from invariant."""
    W = np.random.default_rng(seed).normal(size=(n_in, dim_z)) / np.sqrt(n_in)
    return lambda x: np.tanh(np.asarray(x, float).reshape(len(x), -1) @ W)


# ---------------------------------------------------------------- rotation invariance error
@pytest.mark.parametrize("dim", [2, 3])
def test_rotation_invariance_error_matches_the_reference(dim):
    x = _images(dim)
    encode = _pixel_encoder(x[0].size)
    batches = [x[i : i + 5] for i in range(0, len(x), 5)]  # 5, 5, 2: unequal batches weigh equally, as there
    ref = _ref_rotation_invariance_error(encode, batches, _ref_rotate_image)
    ours = invariance.rotation_invariance_error(encode, x, 5, n_boot=50, seed=0)
    assert ours.value == pytest.approx(ref, abs=1e-9)
    assert ours.ci_low <= ours.value <= ours.ci_high and ours.direction == "lower"
    # the project's variant (random angles, over the between-sample spread) is another number on the same inputs;
    # measured here: 2D 0.650 (reference 0.504), 3D 0.955 (reference 0.532)
    variant = rotation.rotation_invariance(encode, x.astype(np.float32), dim, n_boot=0, seed=0)
    assert abs(variant.value - ref) > 0.05


def test_rotation_invariance_error_of_point_clouds_matches_the_reference():
    rng = np.random.default_rng(0)
    clouds = rng.normal(size=(9, 20, 4))  # (B, N, xyz + intensity), the reference's layout
    encode_last = _pixel_encoder(20 * 4)
    ref = _ref_rotation_invariance_error(encode_last, [clouds[:4], clouds[4:8], clouds[8:]], _ref_rotate_points)
    ours = invariance.rotation_invariance_error(
        lambda c: encode_last(np.transpose(c, (0, 2, 1))),
        np.transpose(clouds, (0, 2, 1)),
        4,
        n_boot=0,
        seed=0,
        kind="points",
    )
    assert ours.value == pytest.approx(ref, abs=1e-9)


# ---------------------------------------------------------------- evolution energy and embedding distance
def _linear_codec(n: int = 12, size: int = 8, seed: int = 0):
    """Images, an exact linear code of them (an orthogonal map) and its inverse."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 1, size, size))
    Q, _ = np.linalg.qr(rng.normal(size=(size * size, size * size)))
    Z = X.reshape(n, -1) @ Q
    exact = lambda z: (np.asarray(z) @ Q.T).reshape(len(z), 1, size, size)  # noqa: E731
    return X, Z, exact


def _mse_loss(a, b):
    return torch.nn.MSELoss(reduction="none")(
        torch.from_numpy(np.asarray(a, float)), torch.from_numpy(np.asarray(b, float))
    ).numpy()


def test_evolution_energy_matches_the_reference_and_sees_a_decoder_that_ignores_its_latent():
    X, Z, exact = _linear_codec()
    mean_image = X.mean(0, keepdims=True)
    ignoring = lambda z: np.repeat(mean_image, len(z), 0) + 1e-3 * exact(z)  # noqa: E731 - all but collapsed
    pairs = interpolation.reference_pairs(len(Z), None, seed=0)
    got = {}
    for name, decoder in (("exact", exact), ("ignoring", ignoring)):
        ref_energy, ref_dist = _ref_evolution(decoder, _mse_loss, Z, X, pairs)
        ours = interpolation.pointwise_evolution_energy(lambda x, z, d=decoder: d(z), X, Z, X, mse, pairs)
        assert ours.mean() == pytest.approx(ref_energy, rel=1e-9)
        assert interpolation.pointwise_embedding_distance(Z, pairs).mean() == pytest.approx(ref_dist, rel=1e-9)
        more = np.random.default_rng(5).normal(size=(30, Z.shape[1]))  # the reference's pool: every embedded cell
        _, ref_pool = _ref_evolution(decoder, _mse_loss, Z, X, pairs, np.concatenate([Z, more]))
        got_pool = interpolation.pointwise_embedding_distance(Z, pairs, np.concatenate([Z, more])).mean()
        assert got_pool == pytest.approx(ref_pool, rel=1e-9) and ref_pool <= ref_dist
        res = interpolation.evolution_energy(lambda x, z, d=decoder: d(z), X, Z, X, mse, n_boot=50, seed=0)
        assert res.value == pytest.approx(ref_energy, rel=1e-9)
        path = interpolation.interpolation_metrics(decoder, Z, decoder(Z), n_boot=0, seed=0)["decoded_path_ratio"]
        got[name] = (res.value, path.value)
    # the exact decoder blends pixel-wise: mean(t^2 + (1 - t)^2) over t = 0.1..0.9
    assert got["exact"][0] == pytest.approx(np.mean([t * t + (1 - t) ** 2 for t in np.arange(1, 10) / 10]))
    assert got["exact"][0] == pytest.approx(0.6333, abs=1e-4)
    # measured: the reference's energy 0.633 (exact) vs 0.950 (ignoring); our path ratio 1.000 for both
    assert got["ignoring"][0] > 0.9 > got["exact"][0] + 0.25, got
    assert got["exact"][1] == pytest.approx(1.0) and got["ignoring"][1] == pytest.approx(1.0)  # blind to it


def test_evolution_energy_of_point_clouds_uses_the_reference_chamfer():
    rng = np.random.default_rng(0)
    clouds = rng.normal(size=(6, 3, 15))  # channels first, as our point-cloud runs
    W = rng.normal(size=(45, 45))
    Z = clouds.reshape(6, -1) @ W
    Winv = np.linalg.inv(W)
    decode = lambda z: (np.asarray(z) @ Winv).reshape(len(z), 3, 15).transpose(0, 2, 1)  # noqa: E731 - (n, N, 3)
    target = clouds.transpose(0, 2, 1)
    pairs = interpolation.reference_pairs(len(Z), None, seed=3)
    ref_energy, _ = _ref_evolution(decode, _ref_chamfer, Z, target, pairs)
    ours = interpolation.pointwise_evolution_energy(
        lambda x, z: decode(z), clouds, Z, target, invariance.chamfer_sum, pairs
    )
    assert ours.mean() == pytest.approx(ref_energy, rel=1e-9)


# ---------------------------------------------------------------- point-cloud reconstruction
def test_reconstruction_chamfer_is_cyto_dls_chamfer_loss():
    rng = np.random.default_rng(0)
    clouds = rng.normal(size=(5, 4, 30))  # xyz + intensity rows
    noisy = clouds[:, :3].transpose(0, 2, 1)[:, :25] + rng.normal(size=(5, 25, 3)) * 0.1  # fewer points, moved
    res = invariance.reconstruction_chamfer(lambda c: noisy, clouds, n_boot=50, seed=0)
    ref = _ref_chamfer(clouds[:, :3].transpose(0, 2, 1), noisy)
    assert res.value == pytest.approx(ref.mean(), rel=1e-9) and res.direction == "lower"
    perfect = invariance.reconstruction_chamfer(lambda c: c[:, :3].transpose(0, 2, 1), clouds, n_boot=0, seed=0)
    assert perfect.value == pytest.approx(0.0, abs=1e-9)


def test_reconstruction_sinkhorn_is_the_references_point_cloud_reconstruction_score():
    """save_embeddings scores clouds with cyto-dl's GeomLoss (get_pc_loss: p 1, blur 0.01 in its config), whose
    forward is SamplesLoss("sinkhorn", p=2, blur=.05)(preds, gts) whatever it is given."""
    from geomloss import SamplesLoss

    from Engineering.Science.transport import earth_movers

    rng = np.random.default_rng(1)
    clouds = rng.normal(size=(4, 3, 40))
    recon = clouds.transpose(0, 2, 1)[:, rng.permutation(40)] + rng.normal(size=(4, 40, 3)) * 0.3
    gts = torch.from_numpy(clouds.transpose(0, 2, 1)).float().contiguous()
    ref = SamplesLoss(loss="sinkhorn", p=2, blur=0.05)(torch.from_numpy(recon).float(), gts).double().numpy()
    res = invariance.reconstruction_sinkhorn(lambda c: recon, clouds, n_boot=20, seed=0)
    assert res.value == pytest.approx(ref.mean(), rel=1e-6)
    # about half the project's squared-W2 Earth Mover's distance (geomloss's p=2 cost is |x - y|^2 / 2)
    emd = earth_movers(torch.from_numpy(recon).float(), gts).double().numpy().mean()
    assert res.value == pytest.approx(emd / 2, rel=0.05)


# ---------------------------------------------------------------- outlier detection
@pytest.mark.parametrize("seed", [0, 1])
def test_outlier_detection_matches_the_reference_classifier(seed):
    rng = np.random.default_rng(seed)
    inliers = rng.normal(size=(90, 8))
    out = rng.normal(size=(14, 8)) + np.r_[1.5, -1.0, np.zeros(6)]  # shifted: linearly separable in part
    Z = np.concatenate([inliers, out])
    y = np.r_[np.zeros(90), np.ones(14)]
    ref = _ref_outlier_detection(Z, y)
    ours = outliers.outlier_detection(Z, y, n_boot=50, seed=0)
    assert ours.value == pytest.approx(ref, abs=0.006)  # the reference rounds each fold to 2 decimals
    assert ours.ci_low <= ours.value <= ours.ci_high and ours.chance == 0.5
    # the project's unsupervised variant is another number (an AUROC) on the same latents;
    # measured: seed 0 reference 0.798 (ours unrounded 0.794) vs AUROC 0.442; seed 1 0.852 (0.850) vs AUROC 0.556
    assert 0.0 <= outliers.outlier_auroc(Z, y, n_boot=0, seed=0).value <= 1.0
    few = outliers.outlier_detection(Z[:94], y[:94], n_boot=0, seed=0)
    assert few.skipped and "5 stratified folds" in few.skipped


# ---------------------------------------------------------------- main_benchmark's wiring and report
def _fake_run(kind: str, images: np.ndarray):
    """A SavedRun stand-in: a linear encoder / exact decoder; its engine reconstructs, decodes and renders (the
    capabilities the benchmark asks it for) and has no pose."""
    n_in = int(np.prod(images.shape[1:]))
    rng = np.random.default_rng(0)
    W = torch.from_numpy(rng.normal(size=(n_in, n_in)) / np.sqrt(n_in)).float()
    Winv = torch.linalg.inv(W)
    shape = images.shape[1:]

    def encode(x, use_ema=False):
        return x.reshape(len(x), -1) @ W

    def decode(z, use_ema=False):
        x = (z @ Winv).reshape(len(z), *shape)
        return x[:, :3].transpose(1, 2) if kind == "points" else x

    engine = SimpleNamespace(
        input_kind=kind,
        embed=encode,
        decode=decode,
        reconstruct=lambda x, z, use_ema: decode(z),
        render=lambda x, codes, use_ema: [decode(c) for c in codes],
    )
    return SimpleNamespace(  # the run's methods call its engine's, as SavedRun's do
        cfg=SimpleNamespace(training=SimpleNamespace(batch_size=4), model=SimpleNamespace(is3D=False)),
        engine=engine,
        use_ema=False,
        checkpoint="fake.ckpt",
        encode=encode,
        decode=decode,
        render=lambda x, codes: engine.render(x, codes, False),
        reconstruct=lambda x: engine.reconstruct(x, encode(x), False),
    )


@pytest.mark.parametrize("kind", ["image", "points"])
def test_main_benchmark_computes_the_reference_families_for_a_run(kind):
    from Engineering.Engines.benchmark import MODEL_METRICS, NotApplicable, model_metrics

    rng = np.random.default_rng(0)
    images = (rng.normal(size=(8, 1, 6, 6)) if kind == "image" else rng.normal(size=(8, 3, 10))).astype(np.float32)
    args = SimpleNamespace(n_boot=20, seed=0, co2_country=None, debug=True)
    compute = model_metrics(_fake_run(kind, images), images, args)
    assert set(MODEL_METRICS) <= set(compute)
    energy = compute["evolution_energy"]()
    if kind == "image":  # an exact linear decoder: pixel-wise blends
        assert energy.value == pytest.approx(0.6333, abs=1e-3)
    assert np.isfinite(energy.value) and energy.value > 0
    alone = compute["embedding_distance"]().value
    assert alone > 0
    Z = np.asarray(_fake_run(kind, images).encode(torch.from_numpy(images)))
    pool = Z[None] + np.linspace(0, 1, 5)[:, None, None] * (np.roll(Z, 1, 0) - Z)[None]  # segments between samples
    with_pool = model_metrics(_fake_run(kind, images), images, args, pool.reshape(-1, Z.shape[1]))
    assert with_pool["embedding_distance"]().value < alone  # nearest among all the run's latents, as the reference
    assert compute["rotation_invariance_error"]().value > 0.05  # a pixel-linear code is not invariant
    with pytest.raises(NotApplicable, match="no pose output"):  # its engine is not Poses: never asked for one
        compute["pose_equivariance_error"]()
    assert compute["decoded_path_ratio"]().value == pytest.approx(1.0, abs=1e-4)
    if kind == "points":
        assert compute["reconstruction_chamfer"]().value == pytest.approx(0.0, abs=1e-3)
        assert abs(compute["reconstruction_sinkhorn"]().value) < 1e-3
        with pytest.raises(NotApplicable, match="reconstruction_chamfer"):
            compute["reconstruction_mse"]()
    else:
        assert compute["reconstruction_mse"]().value == pytest.approx(0.0, abs=1e-6)
        with pytest.raises(NotApplicable, match="reconstruction_mse"):
            compute["reconstruction_chamfer"]()


REFERENCE_NAMES = (
    "rotation_invariance_error",
    "evolution_energy",
    "embedding_distance",
    "outlier_detection",
    "reconstruction_chamfer",
    "reconstruction_sinkhorn",
)
VARIANT_NAMES = ("rotation_invariance", "decoded_path_ratio", "interpolation_distance", "outlier_auroc")


def test_the_report_says_which_definition_is_the_references(tmp_path):
    from Engineering.Engines.benchmark import MODEL_METRICS
    from Engineering.Eval.report import render_report
    from Engineering.Eval.result import MetricResult
    from Engineering.Eval.suite import METRICS

    described = {**METRICS, **MODEL_METRICS}
    for name in REFERENCE_NAMES:
        assert described[name][1].startswith("Reference ("), name
    for name in VARIANT_NAMES:
        assert described[name][1].startswith("Project variant"), name
    results = {
        r: {m: MetricResult(0.5, 0.4, 0.6, "lower", n=3) for m in REFERENCE_NAMES + VARIANT_NAMES} for r in ("a", "b")
    }
    page = render_report(results, described, {}, [], ())
    assert page.count("Reference (") >= len(REFERENCE_NAMES) and page.count("Project variant") >= len(VARIANT_NAMES)
