"""Cross-validation splits for the probes: stratified, and group-aware when asked.

With groups (e.g. patientID when a patient contributes many slices) no group
is ever on both the training and the test side, otherwise a probe can score by
recognising the patient instead of the label.
"""

from __future__ import annotations

import numpy as np
from sklearn.model_selection import GroupKFold, KFold, StratifiedGroupKFold, StratifiedKFold

Split = tuple[np.ndarray, np.ndarray]


def n_splits_for(n_units: int, n_splits: int) -> int:
    """Fewer folds when there are fewer samples/groups than folds (at least 2)."""
    return max(2, min(n_splits, n_units))


def classification_folds(y: np.ndarray, groups: np.ndarray | None, n_splits: int, seed: int) -> list[Split]:
    """Stratified k-fold splits (StratifiedGroupKFold when ``groups`` is given)."""
    y = np.asarray(y)
    if groups is None:
        k = n_splits_for(int(np.unique(y, return_counts=True)[1].min()), n_splits)
        cv = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
        return list(cv.split(np.zeros(len(y)), y))
    k = n_splits_for(len(np.unique(groups)), n_splits)
    cv = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    return list(cv.split(np.zeros(len(y)), y, groups))


def regression_folds(n: int, groups: np.ndarray | None, n_splits: int, n_repeats: int, seed: int) -> list[list[Split]]:
    """``n_repeats`` independent k-fold partitions (group k-fold when ``groups`` is given)."""
    repeats = []
    for r in range(n_repeats):
        if groups is None:
            cv = KFold(n_splits=n_splits_for(n, n_splits), shuffle=True, random_state=seed + r)
            repeats.append(list(cv.split(np.zeros(n))))
        else:
            k = n_splits_for(len(np.unique(groups)), n_splits)
            cv = GroupKFold(n_splits=k, shuffle=True, random_state=seed + r)
            repeats.append(list(cv.split(np.zeros(n), groups=groups)))
    return repeats
