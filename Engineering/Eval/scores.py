"""Prediction scores as statistics of bootstrap weights (see bootstrap.py).

Each factory returns ``stat(W) -> (len(W),)``; at ``W = 1`` the value equals
scikit-learn's ``accuracy_score`` / ``balanced_accuracy_score`` / ``r2_score``
(checked in the tests), but all bootstrap resamples are scored in one matrix
product instead of thousands of calls.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

Stat = Callable[[np.ndarray], np.ndarray]


def accuracy(y_true, y_pred) -> Stat:
    """Fraction of correct predictions (top-1 accuracy)."""
    correct = (np.asarray(y_true) == np.asarray(y_pred)).astype(float)

    def stat(w: np.ndarray) -> np.ndarray:
        return (w @ correct) / w.sum(axis=1)

    return stat


def balanced_accuracy(y_true, y_pred) -> Stat:
    """Mean per-class recall over the classes present in the (resampled) truth."""
    y_true = np.asarray(y_true)
    correct = (y_true == np.asarray(y_pred)).astype(float)
    classes, codes = np.unique(y_true, return_inverse=True)
    onehot = np.eye(len(classes))[codes]  # (n, K)

    def stat(w: np.ndarray) -> np.ndarray:
        hits = w @ (onehot * correct[:, None])
        totals = w @ onehot
        with np.errstate(invalid="ignore", divide="ignore"):
            recall = np.where(totals > 0, hits / totals, np.nan)
        return np.nanmean(recall, axis=1)

    return stat


def r2(y_true, y_pred) -> Stat:
    """Coefficient of determination 1 - SS_res / SS_tot around the (weighted) mean."""
    y = np.asarray(y_true, dtype=float)
    res2 = (y - np.asarray(y_pred, dtype=float)) ** 2
    # Centre first so that SS_tot = sum w y^2 - (sum w y)^2 / sum w does not cancel badly.
    yc = y - y.mean()

    def stat(w: np.ndarray) -> np.ndarray:
        sw = w.sum(axis=1)
        ss_tot = w @ (yc**2) - (w @ yc) ** 2 / sw
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(ss_tot > 0, 1.0 - (w @ res2) / ss_tot, np.nan)

    return stat


def mean_of(stats: list[Stat]) -> Stat:
    """The mean of several statistics under the same weights (e.g. over CV repeats)."""

    def stat(w: np.ndarray) -> np.ndarray:
        return np.mean([s(w) for s in stats], axis=0)

    return stat
