"""The benchmark recovers planted structure (not just that it runs), on small synthetic latents."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.decomposition import PCA
from sklearn.metrics import accuracy_score, balanced_accuracy_score, r2_score
from threadpoolctl import threadpool_limits

from Engineering.data.labels import CATEGORICAL, CONTINUOUS, Target
from Engineering.Eval import batch_effects, compactness, knn, probes, regression, retrieval, scores
from Engineering.Eval.bootstrap import bootstrap_ci, resample_weights, weighted_mean
from Engineering.Eval.folds import classification_folds, regression_folds
from Engineering.Eval.suite import Settings, evaluate_representation, run_benchmark

N_BOOT = 200


@pytest.fixture(autouse=True, scope="module")
def one_blas_thread():
    """As run_benchmark does: the small fits here are fastest on one BLAS thread."""
    with threadpool_limits(1, user_api="blas"):
        yield


def clustered(n_per_class=50, n_classes=3, dim=16, separation=6.0, seed=0):
    """Latents whose classes sit at well separated random centres."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_classes, dim))
    centres *= separation / np.linalg.norm(centres, axis=1, keepdims=True)
    y = np.repeat(np.arange(n_classes), n_per_class)
    return centres[y] + rng.normal(size=(len(y), dim)), y.astype(str)


def batched(shift: float, n_per_batch=60, dim=16, seed=1):
    """Noise latents of 3 batches; each batch moved by ``shift`` along its own direction."""
    rng = np.random.default_rng(seed)
    batch = np.repeat(np.arange(3), n_per_batch)
    directions = np.eye(dim)[:3] * shift
    return rng.normal(size=(len(batch), dim)) + directions[batch], batch.astype(str)


def contains(res, x) -> bool:
    return res.ci_low <= x <= res.ci_high


# --- probes and kNN -------------------------------------------------------------------------------------


def test_separable_labels_give_near_perfect_probe_and_knn():
    Z, y = clustered()
    res = probes.linear_probe_classification(Z, y, None, 5, 3, N_BOOT, 0)
    assert res["probe_balanced_accuracy"].value > 0.97
    assert res["probe_accuracy"].value > 0.97
    assert res["probe_balanced_accuracy"].chance == pytest.approx(1 / 3)
    assert knn.knn_accuracy(Z, y, None, 15, 5, N_BOOT, 0).value > 0.97


def test_random_labels_give_chance_within_ci():
    rng = np.random.default_rng(3)
    Z = rng.normal(size=(200, 16))
    y = rng.permutation(np.repeat(["a", "b"], 100))
    res = probes.linear_probe_classification(Z, y, None, 5, 3, N_BOOT, 0)
    assert contains(res["probe_balanced_accuracy"], 0.5)
    assert res["probe_balanced_accuracy"].ci_high - res["probe_balanced_accuracy"].ci_low < 0.3
    assert contains(knn.knn_accuracy(Z, y, None, 15, 5, N_BOOT, 0), 0.5)


def test_regression_r2_high_for_linear_target_and_near_zero_for_noise():
    rng = np.random.default_rng(4)
    Z = rng.normal(size=(150, 8))
    signal = Z @ rng.normal(size=8) + 0.1 * rng.normal(size=150)
    assert regression.linear_regression_r2(Z, signal, None, 5, 2, N_BOOT, 0).value > 0.95
    noise = regression.linear_regression_r2(Z, rng.normal(size=150), None, 5, 2, N_BOOT, 0)
    assert noise.value < 0.05 and noise.ci_low < 0


def test_ridge_path_matches_sklearn_ridge():
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(12)
    X, y, X_eval = rng.normal(size=(40, 6)) * 3 + 1, rng.normal(size=40), rng.normal(size=(7, 6))
    alphas = np.array([0.01, 1.0, 100.0])
    path = regression.ridge_path(X, y, X_eval, alphas)
    for j, alpha in enumerate(alphas):
        expected = make_pipeline(StandardScaler(), Ridge(alpha=alpha)).fit(X, y).predict(X_eval)
        np.testing.assert_allclose(path[:, j], expected, rtol=1e-8, atol=1e-10)


# --- group-aware cross-validation ---------------------------------------------------------------------


def patient_clusters(n_patients=30, per_patient=8, dim=8, seed=5):
    """Each patient is a tight cluster with a random label: only patient identity is learnable."""
    rng = np.random.default_rng(seed)
    patient = np.repeat(np.arange(n_patients), per_patient)
    label = rng.permutation(np.repeat(["x", "y"], n_patients // 2))[patient]
    Z = 4 * rng.normal(size=(n_patients, dim))[patient] + 0.1 * rng.normal(size=(len(patient), dim))
    return Z, label, patient


def test_group_folds_never_split_a_group():
    _, y, groups = patient_clusters()
    for train, test in classification_folds(y, groups, 5, 0):
        assert not set(groups[train]) & set(groups[test])
    for folds in regression_folds(len(y), groups, 5, 3, 0):
        assert sorted(np.concatenate([t for _, t in folds])) == list(range(len(y)))
        for train, test in folds:
            assert not set(groups[train]) & set(groups[test])


def test_group_aware_cv_removes_patient_leakage():
    Z, y, patient = patient_clusters()
    # Without groups the kNN recognises the patient; with groups it is back at chance.
    leaky = knn.knn_accuracy(Z, y, None, 5, 5, N_BOOT, 0)
    fair = knn.knn_accuracy(Z, y, patient, 5, 5, N_BOOT, 0)
    assert leaky.value > 0.9
    assert contains(fair, 0.5)
    # The same for a continuous per-patient value and the regression probe (penalty chosen group-aware too).
    value = np.random.default_rng(0).normal(size=patient.max() + 1)[patient]
    fair_r2 = regression.linear_regression_r2(Z, value, patient, 5, 1, N_BOOT, 0).value
    assert fair_r2 < 0.1
    assert regression.linear_regression_r2(Z, value, None, 5, 1, N_BOOT, 0).value > fair_r2 + 0.2


# --- compactness -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("dim", [3, 6])
def test_intrinsic_dimension_of_a_linear_subspace(dim):
    rng = np.random.default_rng(dim)
    basis, _ = np.linalg.qr(rng.normal(size=(32, dim)))
    Z = rng.normal(size=(600, dim)) @ basis.T
    res = compactness.intrinsic_dimension(Z, N_BOOT, 0)
    assert abs(res.value - dim) < 0.75
    assert contains(res, res.value)
    assert compactness.pca_components(Z, N_BOOT, 0).value <= dim


def test_pca_components_match_sklearn():
    rng = np.random.default_rng(7)
    Z = rng.normal(size=(300, 12)) * np.linspace(3, 0.2, 12)
    expected = PCA(n_components=0.9, svd_solver="full").fit(Z).n_components_
    assert compactness.components_for_variance(Z, 0.9)(np.ones((1, len(Z))))[0] == expected
    res = compactness.pca_components(Z, N_BOOT, 0)
    assert res.value == expected and contains(res, expected)


# --- batch effects ---------------------------------------------------------------------------------------


def test_planted_batch_shift_is_detected():
    Z, batch = batched(shift=5.0)
    acc = batch_effects.batch_knn_accuracy(Z, batch, None, 15, 5, N_BOOT, 0)
    assert acc.value > 0.9 and acc.ci_low > acc.chance + 0.3
    assert batch_effects.batch_ilisi(Z, batch, None, 15, N_BOOT, 0).value < 0.2
    assert batch_effects.batch_silhouette(Z, batch, None, N_BOOT, 0).value < 0.7


def test_no_batch_shift_means_well_mixed():
    Z, batch = batched(shift=0.0)
    acc = batch_effects.batch_knn_accuracy(Z, batch, None, 15, 5, N_BOOT, 0)
    assert contains(acc, 1 / 3)
    assert batch_effects.batch_ilisi(Z, batch, None, 15, N_BOOT, 0).value > 0.7
    assert batch_effects.batch_silhouette(Z, batch, None, N_BOOT, 0).value > 0.9


def test_bio_silhouette_orders_structure():
    Z, y = clustered()
    rng = np.random.default_rng(0)
    assert batch_effects.bio_silhouette(Z, y, None, N_BOOT, 0).value > 0.7
    assert abs(batch_effects.bio_silhouette(rng.normal(size=Z.shape), y, None, N_BOOT, 0).value - 0.5) < 0.05


# --- retrieval -------------------------------------------------------------------------------------------


def test_retrieval_map_high_for_clustered_labels_with_small_p():
    Z, y = clustered()
    res = retrieval.retrieval_map(Z, y, None, N_BOOT, 99, 0)
    assert res.value > 0.95
    assert res.p_value == pytest.approx(1 / 100)
    assert res.chance == pytest.approx(49 / 149)


def test_retrieval_map_at_chance_for_random_labels():
    rng = np.random.default_rng(8)
    Z, y = rng.normal(size=(150, 16)), rng.permutation(np.repeat(["a", "b", "c"], 50))
    res = retrieval.retrieval_map(Z, y, None, N_BOOT, 99, 0)
    assert res.value < res.chance + 0.05
    assert res.p_value > 0.05


def test_retrieval_skips_own_group():
    Z, y, patient = patient_clusters()
    # Without groups a patient's own samples top the ranking and look like a significant label signal.
    leaky = retrieval.retrieval_map(Z, y, None, N_BOOT, 49, 0)
    fair = retrieval.retrieval_map(Z, y, patient, N_BOOT, 49, 0)
    assert leaky.p_value == pytest.approx(1 / 50)
    assert fair.value < leaky.value - 0.03
    assert fair.p_value > 0.05


def test_average_precision_by_hand():
    # Query 0 (label 0): ranking 1 (0), 2 (1), 3 (0), then the excluded slot -> AP = (1/1 + 2/3) / 2.
    order = np.array([[1, 2, 3, 4]])
    ap, n_rel = retrieval.average_precisions(order, np.array([0, 0, 1, 0]), np.array([0]))
    assert ap[0] == pytest.approx((1 + 2 / 3) / 2) and n_rel[0] == 2
    # The same through rankings: cosine order of 1D points, the query itself excluded.
    Z = np.array([[1.0, 0.0], [1.0, 0.1], [1.0, 0.5], [1.0, 1.0]])
    order, n_cand = retrieval.rankings(Z, np.array([0]))
    assert order.tolist() == [[1, 2, 3, 4]] and n_cand.tolist() == [3]


# --- bootstrap and scores --------------------------------------------------------------------------------


def test_weighted_scores_match_sklearn():
    rng = np.random.default_rng(9)
    y = rng.choice(["a", "b", "c"], 80, p=[0.6, 0.3, 0.1])
    pred = np.where(rng.random(80) < 0.7, y, rng.choice(["a", "b", "c"], 80))
    w = resample_weights(80, 5, rng)
    for i in range(5):
        idx = np.repeat(np.arange(80), w[i])
        assert scores.accuracy(y, pred)(w[i : i + 1])[0] == pytest.approx(accuracy_score(y[idx], pred[idx]))
        assert scores.balanced_accuracy(y, pred)(w[i : i + 1])[0] == pytest.approx(
            balanced_accuracy_score(y[idx], pred[idx])
        )
    t, p = rng.normal(size=80), rng.normal(size=80)
    idx = np.repeat(np.arange(80), w[0])
    assert scores.r2(t, p)(w[:1])[0] == pytest.approx(r2_score(t[idx], p[idx]))


def test_cluster_bootstrap_draws_whole_groups():
    groups = np.repeat(np.arange(10), 4)
    w = resample_weights(40, 50, np.random.default_rng(0), groups)
    assert (w.reshape(50, 10, 4) == w.reshape(50, 10, 4)[:, :, :1]).all()
    assert (w.reshape(50, 10, 4)[:, :, 0].sum(axis=1) == 10).all()


def test_bootstrap_ci_contains_point_estimate():
    values = np.random.default_rng(10).exponential(size=300)
    value, low, high = bootstrap_ci(weighted_mean(values), 300, 500, 0)
    assert value == pytest.approx(values.mean()) and low < value < high
    Z, y = clustered(separation=2.0)
    results = evaluate_representation(
        Z, [Target("y", CATEGORICAL, y, np.ones(len(y), bool))], None, None, Settings(n_boot=N_BOOT, n_perm=20)
    )
    for name, res in results.items():
        assert res.skipped is None, name
        assert res.ci_low <= res.value <= res.ci_high, name


def test_suite_adds_baselines_and_records_failures_as_skips():
    rng = np.random.default_rng(11)
    Z = rng.normal(size=(40, 6))
    targets = [Target("cont", CONTINUOUS, rng.normal(size=40), np.ones(40, bool))]
    results = run_benchmark(
        {"run": Z}, targets, settings=Settings(n_boot=50, id_ks=(10, 60)), pixels=rng.normal(size=(40, 4, 4))
    )
    assert set(results) == {"run", "baseline_random", "baseline_pca_pixels"}
    assert results["baseline_pca_pixels"]["r2/cont"].value is not None
    skipped = results["run"]["intrinsic_dimension"]  # k=60 needs more than 40 samples
    assert skipped.value is None and "more than 60 samples" in skipped.skipped
