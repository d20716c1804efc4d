"""scikit-learn reference models for the latent predictors: ridge regression and logistic regression.

Fitted on exactly the same standardised latents and training rows as the
Lightning heads, so the heads' scores can be read against a well-understood
linear model. The penalty is chosen on the validation split (lowest squared
error, or lowest log-loss), never on the test split; without a validation split
the middle of the grid is used.
"""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression, Ridge

RIDGE, LOGISTIC = "sklearn_ridge", "sklearn_logistic"


def _choose(grid: list[float], fit, val_loss, has_val: bool):
    if not has_val:
        value = grid[len(grid) // 2]
        return fit(value), value
    scored = []
    for value in grid:
        model = fit(value)
        scored.append((val_loss(model), value, model))
    best = min(scored, key=lambda s: s[0])  # ties: the first, i.e. the grid's order
    return best[2], best[1]


def ridge_predictions(
    Z: np.ndarray, y: np.ndarray, train: np.ndarray, val: np.ndarray, alphas: list[float]
) -> tuple[np.ndarray, float]:
    """Predictions (n,) for every row and the chosen alpha; ``y`` is NaN where missing."""
    have = np.isfinite(y)
    tr, va = train & have, val & have

    def fit(alpha):
        return Ridge(alpha=alpha).fit(Z[tr], y[tr])

    model, alpha = _choose(alphas, fit, lambda m: float(np.mean((m.predict(Z[va]) - y[va]) ** 2)), va.any())
    return model.predict(Z), alpha


def logistic_probabilities(
    Z: np.ndarray, codes: np.ndarray, n_classes: int, train: np.ndarray, val: np.ndarray, Cs: list[float], seed: int
) -> tuple[np.ndarray, float | None]:
    """Class probabilities (n, n_classes) for every row and the chosen C; ``codes`` is NaN where missing."""
    have = np.isfinite(codes)
    tr, va = train & have, val & have
    present = np.unique(codes[tr]).astype(int)
    if len(present) < 2:  # one class in training: the only honest prediction is that class
        proba = np.zeros((len(Z), n_classes))
        proba[:, present[0]] = 1.0
        return proba, None

    def fit(C):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            return LogisticRegression(C=C, max_iter=2000, random_state=seed).fit(Z[tr], codes[tr].astype(int))

    def full(model, X):
        proba = np.zeros((len(X), n_classes))
        proba[:, model.classes_] = model.predict_proba(X)
        return proba

    def log_loss(model):
        p = full(model, Z[va])[np.arange(int(va.sum())), codes[va].astype(int)]
        return float(-np.mean(np.log(np.clip(p, 1e-12, None))))

    model, C = _choose(Cs, fit, log_loss, va.any())
    return full(model, Z), C
