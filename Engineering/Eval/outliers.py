"""Outlier detection, given a column that marks known outliers (1/0).

- ``outlier_detection`` is the reference's (AllenCell benchmarking_representations, ``outlier_detection`` in
  ``src/br/features/outlier_compactness.py`` at 60c6b7093945c05ba2f38d8ab580d63b0d76df57; Vyas et al., bioRxiv
  2024): a class-weighted classifier (standardise + logistic regression with weights n / (2 n_class), max_iter
  3000) cross-validated on the reference's 5 stratified shuffled folds (random_state 2652124), scored by the mean
  over folds of the balanced accuracy. (The reference rounds each fold's score to 2 decimals; we do not.) Higher
  is better; 0.5 is chance. The CI bootstraps the samples, each fold's score recomputed on the resample.
- ``outlier_auroc`` is this project's unsupervised variant: a sample whose neighbourhood in latent space has a
  high local intrinsic dimension (Levina-Bickel MLE, ``compactness``) is off the manifold the others lie on; the
  AUROC of that score against the marked outliers (higher is better; 0.5 is chance; the CI bootstraps the
  samples). It uses no label to fit anything, so it asks whether outliers stand out on their own, where the
  reference asks whether they are linearly separable.
"""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.base import clone
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from Engineering.Eval import scores
from Engineering.Eval.bootstrap import bootstrap_ci
from Engineering.Eval.compactness import DEFAULT_KS, pointwise_intrinsic_dimension
from Engineering.Eval.result import HIGHER, MetricResult

METRICS = {
    "outlier_auroc": (
        HIGHER,
        "Project variant (unsupervised): AUROC of the local intrinsic dimension as a "
        "score of the known outliers. Higher is better (0.5 = chance).",
    ),
    "outlier_detection": (
        HIGHER,
        "Reference (AllenCell benchmarking_representations): balanced accuracy of a "
        "class-weighted logistic regression, mean over 5 stratified folds. Higher "
        "is better (0.5 = chance).",
    ),
}
REFERENCE_FOLDS, REFERENCE_SPLIT_SEED = 5, 2652124


def outlier_detection(Z: np.ndarray, is_outlier: np.ndarray, n_boot: int, seed: int) -> MetricResult:
    """The reference's classifier (module doc); ``seed`` only seeds the bootstrap (the folds are the reference's)."""
    y = np.asarray(is_outlier).astype(int)
    counts = np.bincount(y, minlength=2)
    if counts.min() < REFERENCE_FOLDS:
        return MetricResult.skip(
            HIGHER,
            f"needs >= {REFERENCE_FOLDS} outliers and inliers for the reference's "
            f"{REFERENCE_FOLDS} stratified folds (has {counts[1]} and {counts[0]})",
            n=len(y),
        )
    model = make_pipeline(StandardScaler(), LogisticRegression(class_weight="balanced", max_iter=3000))
    folds = StratifiedKFold(n_splits=REFERENCE_FOLDS, shuffle=True, random_state=REFERENCE_SPLIT_SEED)
    per_fold = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for train, test in folds.split(Z, y):
            pred = clone(model).fit(Z[train], y[train]).predict(Z[test])
            per_fold.append((test, scores.balanced_accuracy(y[test], pred)))

    def stat(w: np.ndarray) -> np.ndarray:
        return np.nanmean([score(w[:, test]) for test, score in per_fold], axis=0)

    return MetricResult.from_ci(bootstrap_ci(stat, len(y), n_boot, seed), HIGHER, len(y), chance=0.5)


def outlier_scores(Z: np.ndarray, ks=DEFAULT_KS) -> np.ndarray:
    """Per-sample local intrinsic dimension: higher = more of an outlier."""
    return pointwise_intrinsic_dimension(np.asarray(Z, dtype=float), ks)


def outlier_auroc(Z: np.ndarray, is_outlier: np.ndarray, n_boot: int, seed: int, ks=DEFAULT_KS) -> MetricResult:
    y = np.asarray(is_outlier).astype(bool)
    if y.all() or not y.any():
        return MetricResult.skip(HIGHER, "needs both outliers and inliers", n=len(y))
    s = outlier_scores(Z, ks)
    ok = np.isfinite(s)
    s, y = s[ok], y[ok]

    def stat(w: np.ndarray) -> np.ndarray:
        out = np.full(len(w), np.nan)
        for i, wi in enumerate(w):
            idx = np.repeat(np.arange(len(s)), wi)
            if y[idx].any() and not y[idx].all():
                out[i] = roc_auc_score(y[idx], s[idx])
        return out

    return MetricResult.from_ci(bootstrap_ci(stat, len(s), n_boot, seed), HIGHER, len(s), chance=0.5)
