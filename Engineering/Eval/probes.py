"""Linear probe classification: how linearly decodable a categorical label is.

Standardise + multinomial logistic regression (C=1), both fitted inside each
training fold (a scaler fitted on all data leaks test statistics), on stratified
k-fold splits (group-aware with groups), scored by balanced accuracy (mean
per-class recall; Brodersen et al., ICPR 2010) and top-1 accuracy. Scores are
averaged over repeated k-fold partitions (different shuffles), which removes most
of the partition noise from the point estimate. Linear probing as a
representation benchmark follows Alain & Bengio (ICLR-W 2017) and Kolesnikov et
al. (CVPR 2019). CIs: percentile bootstrap over out-of-fold predictions (see
bootstrap.py). Continuous labels: regression.py.
"""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from Engineering.Eval import scores
from Engineering.Eval.bootstrap import bootstrap_ci
from Engineering.Eval.folds import classification_folds
from Engineering.Eval.result import HIGHER, MetricResult

METRICS = {  # family -> (direction, description)
    "probe_balanced_accuracy": (
        HIGHER,
        "Linear probe (standardise + logistic regression, repeated stratified CV): "
        "mean per-class recall. Higher is better; chance = 1/#classes.",
    ),
    "probe_accuracy": (HIGHER, "Linear probe top-1 accuracy. Higher is better; chance = share of the largest class."),
}


def classification_oof(
    Z: np.ndarray, y: np.ndarray, groups: np.ndarray | None, n_splits: int, n_repeats: int, seed: int
) -> list[np.ndarray]:
    """Out-of-fold logistic-regression predictions of ``y``, one array per CV repeat."""
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    with warnings.catch_warnings():
        # A probe that has not fully converged is still a valid (slightly pessimistic) probe.
        warnings.simplefilter("ignore", ConvergenceWarning)
        return [
            cross_val_predict(model, Z, y, cv=classification_folds(y, groups, n_splits, seed + r))
            for r in range(n_repeats)
        ]


def linear_probe_classification(
    Z: np.ndarray, y: np.ndarray, groups: np.ndarray | None, n_splits: int, n_repeats: int, n_boot: int, seed: int
) -> dict[str, MetricResult]:
    """Balanced and top-1 accuracy of a cross-validated linear probe (mean over repeats), with bootstrap CIs."""
    preds = classification_oof(Z, y, groups, n_splits, n_repeats, seed)
    _, counts = np.unique(y, return_counts=True)
    n = len(y)
    balanced = scores.mean_of([scores.balanced_accuracy(y, p) for p in preds])
    top1 = scores.mean_of([scores.accuracy(y, p) for p in preds])
    return {
        "probe_balanced_accuracy": MetricResult.from_ci(
            bootstrap_ci(balanced, n, n_boot, seed, groups), HIGHER, n, chance=1.0 / len(counts)
        ),
        "probe_accuracy": MetricResult.from_ci(
            bootstrap_ci(top1, n, n_boot, seed, groups), HIGHER, n, chance=counts.max() / n
        ),
    }
