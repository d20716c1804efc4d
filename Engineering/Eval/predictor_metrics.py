"""Scores of a predictor on one target and one split (main_latentcls).

Regression: R² (1 - SS_res / SS_tot around the split's own mean; <= 0 means no
better than predicting that mean), MAE (in the target's units) and Pearson r.
Classification: accuracy, balanced accuracy (mean recall over the classes
present) and macro AUROC (one-vs-rest, averaged over the classes that have both
positives and negatives in the split). A score that is undefined on the split
(one sample, a constant truth, a single class) is NaN rather than an error.
"""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.metrics import balanced_accuracy_score, r2_score, roc_auc_score

REGRESSION_METRICS = ("r2", "mae", "pearson_r")
CLASSIFICATION_METRICS = ("accuracy", "balanced_accuracy", "auroc_macro")
ALL_METRICS = REGRESSION_METRICS + CLASSIFICATION_METRICS


def regression_scores(truth: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    truth, pred = np.asarray(truth, float), np.asarray(pred, float)
    n = len(truth)
    varies = n > 1 and np.std(truth) > 0
    r2 = float(r2_score(truth, pred)) if varies else np.nan
    mae = float(np.mean(np.abs(truth - pred))) if n else np.nan
    r = float(np.corrcoef(truth, pred)[0, 1]) if varies and np.std(pred) > 0 else np.nan
    return {"r2": r2, "mae": mae, "pearson_r": r}


def classification_scores(truth_codes: np.ndarray, proba: np.ndarray) -> dict[str, float]:
    """``truth_codes`` (n,) class indices into the columns of ``proba`` (n, K)."""
    truth_codes = np.asarray(truth_codes, int)
    if len(truth_codes) == 0:
        return dict.fromkeys(CLASSIFICATION_METRICS, np.nan)
    pred = np.argmax(proba, axis=1)
    aucs = [
        roc_auc_score(truth_codes == k, proba[:, k])
        for k in range(proba.shape[1])
        if 0 < np.sum(truth_codes == k) < len(truth_codes)
    ]
    with warnings.catch_warnings():  # a predicted class absent from the truth is expected on small splits
        warnings.simplefilter("ignore", UserWarning)
        balanced = float(balanced_accuracy_score(truth_codes, pred))
    return {
        "accuracy": float(np.mean(pred == truth_codes)),
        "balanced_accuracy": balanced,
        "auroc_macro": float(np.mean(aucs)) if aucs else np.nan,
    }
