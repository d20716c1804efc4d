"""k-nearest-neighbour classification accuracy (k=15, cosine) of a label.

A non-parametric probe: it asks whether samples with the same label are close
in the latent space, without any training on top (the kNN monitor of Wu et al.,
CVPR 2018, and Caron et al., DINO, ICCV 2021). Scored on the same stratified
(group-aware) folds as the linear probe; CI by bootstrap over out-of-fold
predictions.
"""

from __future__ import annotations

import numpy as np
from sklearn.model_selection import cross_val_predict
from sklearn.neighbors import KNeighborsClassifier

from Engineering.Eval import scores
from Engineering.Eval.bootstrap import bootstrap_ci
from Engineering.Eval.folds import classification_folds
from Engineering.Eval.result import HIGHER, MetricResult

METRICS = {
    "knn_accuracy": (
        HIGHER,
        "k-nearest-neighbour (k=15, cosine) top-1 accuracy on held-out folds. "
        "Higher is better; chance = share of the largest class.",
    ),
}


def knn_oof(Z: np.ndarray, y: np.ndarray, groups: np.ndarray | None, k: int, n_splits: int, seed: int) -> np.ndarray:
    """Out-of-fold kNN predictions (cosine distance, majority vote)."""
    folds = classification_folds(y, groups, n_splits, seed)
    k = max(1, min(k, min(len(train) for train, _ in folds)))
    model = KNeighborsClassifier(n_neighbors=k, metric="cosine", algorithm="brute")
    return cross_val_predict(model, Z, y, cv=folds)


def knn_accuracy(
    Z: np.ndarray, y: np.ndarray, groups: np.ndarray | None, k: int, n_splits: int, n_boot: int, seed: int
) -> MetricResult:
    pred = knn_oof(Z, y, groups, k, n_splits, seed)
    _, counts = np.unique(y, return_counts=True)
    return MetricResult.from_ci(
        bootstrap_ci(scores.accuracy(y, pred), len(y), n_boot, seed, groups),
        HIGHER,
        len(y),
        chance=counts.max() / len(y),
    )
