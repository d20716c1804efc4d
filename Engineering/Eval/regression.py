"""Linear regression probe: R² of a continuous label predicted linearly from the latents.

Standardise + ridge regression, fitted inside each training fold of a repeated
k-fold (group k-fold with groups); R² of the out-of-fold predictions, averaged
over repeats. The ridge penalty is chosen inside each training fold by an inner
3-fold CV that is group-aware too: leave-one-out (RidgeCV's default) would let
a patient's other slices choose a penalty that memorises the patient. All
penalties of an inner fold come from one SVD (the closed-form ridge path,
Hoerl & Kennard, Technometrics 1970), which is what makes nested selection
cheap; the final model per fold is scikit-learn's Ridge. CIs: percentile
bootstrap over out-of-fold predictions (see bootstrap.py).
"""

from __future__ import annotations

import numpy as np
from sklearn.linear_model import Ridge
from sklearn.model_selection import GroupKFold, KFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from Engineering.Eval import scores
from Engineering.Eval.bootstrap import bootstrap_ci
from Engineering.Eval.folds import n_splits_for, regression_folds
from Engineering.Eval.result import HIGHER, MetricResult

METRICS = {
    "r2": (
        HIGHER,
        "Linear (ridge, nested penalty choice) regression R² of a continuous label, repeated k-fold. "
        "Higher is better; 0 = predicting the training mean.",
    ),
}
ALPHAS = np.logspace(-3, 4, 15)
INNER_SPLITS = 3


def ridge_path(X_train: np.ndarray, y_train: np.ndarray, X_eval: np.ndarray, alphas: np.ndarray) -> np.ndarray:
    """Predictions (n_eval, n_alphas) of standardise + Ridge(alpha) for every alpha, from one SVD."""
    scaler = StandardScaler().fit(X_train)
    A, B = scaler.transform(X_train), scaler.transform(X_eval)
    mean = y_train.mean()
    U, s, Vt = np.linalg.svd(A, full_matrices=False)
    # Ridge coefficients: V diag(s / (s^2 + alpha)) U^T (y - mean); the intercept is the mean of y.
    coefs = Vt.T @ ((s * (U.T @ (y_train - mean)))[:, None] / (s[:, None] ** 2 + alphas[None, :]))
    return B @ coefs + mean


def select_alpha(
    X: np.ndarray, y: np.ndarray, groups: np.ndarray | None, seed: int, alphas: np.ndarray = ALPHAS
) -> float:
    """The penalty with the least inner-CV squared error (group-aware inner folds with groups)."""
    if groups is None:
        inner = KFold(n_splits_for(len(y), INNER_SPLITS), shuffle=True, random_state=seed).split(X)
    else:
        k = n_splits_for(len(np.unique(groups)), INNER_SPLITS)
        inner = GroupKFold(k, shuffle=True, random_state=seed).split(X, groups=groups)
    errors = np.zeros(len(alphas))
    for tr, va in inner:
        errors += ((ridge_path(X[tr], y[tr], X[va], alphas) - y[va][:, None]) ** 2).sum(axis=0)
    return float(alphas[np.argmin(errors)])


def regression_oof(
    Z: np.ndarray, y: np.ndarray, groups: np.ndarray | None, n_splits: int, n_repeats: int, seed: int
) -> list[np.ndarray]:
    """Out-of-fold ridge predictions of ``y``, one array per repeat."""
    preds = []
    for r, folds in enumerate(regression_folds(len(y), groups, n_splits, n_repeats, seed)):
        pred = np.empty(len(y))
        for train, test in folds:
            g = None if groups is None else groups[train]
            alpha = select_alpha(Z[train], y[train], g, seed + r)
            model = make_pipeline(StandardScaler(), Ridge(alpha=alpha)).fit(Z[train], y[train])
            pred[test] = model.predict(Z[test])
        preds.append(pred)
    return preds


def linear_regression_r2(
    Z: np.ndarray, y: np.ndarray, groups: np.ndarray | None, n_splits: int, n_repeats: int, n_boot: int, seed: int
) -> MetricResult:
    """Mean out-of-fold R² over repeats; every resample is scored on all repeats alike."""
    y = np.asarray(y, dtype=float)
    preds = regression_oof(Z, y, groups, n_splits, n_repeats, seed)
    stat = scores.mean_of([scores.r2(y, p) for p in preds])
    return MetricResult.from_ci(bootstrap_ci(stat, len(y), n_boot, seed, groups), HIGHER, len(y), chance=0.0)
