"""Outlier detection from intrinsic dimension (seed 003's outlier classification): a sample whose neighbourhood
in latent space has a high local intrinsic dimension (Levina-Bickel MLE, ``compactness``) is off the manifold the
others lie on. With a column that marks known outliers, the score's AUROC says how well the representation
singles them out (higher is better; 0.5 is chance); the CI bootstraps the samples.
"""
from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_auc_score

from Engineering.Eval.bootstrap import bootstrap_ci
from Engineering.Eval.compactness import DEFAULT_KS, pointwise_intrinsic_dimension
from Engineering.Eval.result import HIGHER, MetricResult

METRICS = {"outlier_auroc": (HIGHER, "AUROC of the local intrinsic dimension as a score of the known outliers. "
                                     "Higher is better (0.5 = chance).")}


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
