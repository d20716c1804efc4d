"""Batch effects (e.g. acquisition site) and conservation of biology in the latents.

Following the single-cell integration benchmark scIB (Luecken et al., Nature
Methods 2022), with the same orientation (1 = best):
- batch kNN balanced accuracy: how well a kNN classifier (k=15, cosine, held-out
  folds) recovers the batch; chance = 1/#batches. Lower is better: a good
  representation should not encode the scanner.
- batch silhouette: 1 - |silhouette| of the batch labels, averaged over samples
  (scIB's batch ASW, computed over all samples rather than per cell type).
  Higher is better: 1 = batches fully interleaved, 0 = batches separated.
- batch iLISI: the inverse Simpson index of the batch mix among a sample's k
  nearest neighbours (Korsunsky et al., Harmony, Nature Methods 2019), using a
  plain kNN neighbourhood instead of LISI's perplexity-weighted one, rescaled
  (iLISI - 1) / (#batches - 1). Higher is better: 1 = every neighbourhood holds
  all batches equally (the maximum is below 1 when batches are unbalanced).
- bio silhouette: (silhouette of a biological label + 1) / 2. Higher is better:
  samples sit closer to their own class than to others.
Silhouettes use Euclidean distance as in scIB (Rousseeuw, J. Comput. Appl.
Math. 1987). CIs bootstrap the per-sample values (batch kNN: the out-of-fold
predictions).
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import silhouette_samples

from Engineering.Eval import scores
from Engineering.Eval.bootstrap import bootstrap_ci, weighted_mean
from Engineering.Eval.knn import knn_oof
from Engineering.Eval.neighbours import cosine_neighbours
from Engineering.Eval.result import HIGHER, LOWER, MetricResult
from Engineering.Eval.subsample import subsample_indices, subset_note

METRICS = {
    "batch_knn_balanced_accuracy": (
        LOWER,
        "kNN (k=15, cosine) balanced accuracy at predicting the batch. Lower is better; chance = 1/#batches.",
    ),
    "batch_silhouette": (HIGHER, "1 - |silhouette| by batch (scIB batch ASW). Higher is better; 1 = well mixed."),
    "batch_ilisi": (
        HIGHER,
        "Neighbourhood batch mixing (inverse Simpson index of batches among 15 cosine neighbours, "
        "rescaled to [0, 1]). Higher is better; 1 = well mixed.",
    ),
    "bio_silhouette": (HIGHER, "(silhouette by label + 1) / 2. Higher is better; 0.5 = no class structure."),
}


def batch_knn_accuracy(
    Z: np.ndarray, batch: np.ndarray, groups: np.ndarray | None, k: int, n_splits: int, n_boot: int, seed: int
) -> MetricResult:
    pred = knn_oof(Z, batch, groups, k, n_splits, seed)
    n_batches = len(np.unique(batch))
    return MetricResult.from_ci(
        bootstrap_ci(scores.balanced_accuracy(batch, pred), len(batch), n_boot, seed, groups),
        LOWER,
        len(batch),
        chance=1.0 / n_batches,
    )


def batch_silhouette(
    Z: np.ndarray, batch: np.ndarray, groups: np.ndarray | None, n_boot: int, seed: int
) -> MetricResult:
    values, groups, note = _silhouette(Z, batch, groups, seed)
    return MetricResult.from_ci(
        bootstrap_ci(weighted_mean(1.0 - np.abs(values)), len(values), n_boot, seed, groups),
        HIGHER,
        len(values),
        note=note,
    )


def bio_silhouette(
    Z: np.ndarray, labels: np.ndarray, groups: np.ndarray | None, n_boot: int, seed: int
) -> MetricResult:
    values, groups, note = _silhouette(Z, labels, groups, seed)
    return MetricResult.from_ci(
        bootstrap_ci(weighted_mean((values + 1.0) / 2.0), len(values), n_boot, seed, groups),
        HIGHER,
        len(values),
        note=note,
    )


def pointwise_ilisi(Z: np.ndarray, batch: np.ndarray, k: int, groups: np.ndarray | None = None) -> np.ndarray:
    """Per-sample rescaled inverse Simpson index of batches among the k nearest neighbours."""
    codes = np.unique(batch, return_inverse=True)[1]
    n_batches = int(codes.max()) + 1
    idx, ok = cosine_neighbours(Z, k, groups)
    counts = np.zeros((len(Z), n_batches))
    for b in range(n_batches):
        counts[:, b] = ((codes[idx] == b) & ok).sum(axis=1)
    total = counts.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        simpson = ((counts / total[:, None]) ** 2).sum(axis=1)
        return np.where(total > 0, (1.0 / simpson - 1.0) / (n_batches - 1), np.nan)


def batch_ilisi(
    Z: np.ndarray, batch: np.ndarray, groups: np.ndarray | None, k: int, n_boot: int, seed: int
) -> MetricResult:
    values = pointwise_ilisi(Z, batch, k, groups)
    return MetricResult.from_ci(
        bootstrap_ci(weighted_mean(values), len(values), n_boot, seed, groups), HIGHER, int(np.isfinite(values).sum())
    )


def _silhouette(Z: np.ndarray, labels: np.ndarray, groups: np.ndarray | None, seed: int):
    """Per-sample silhouettes (on a seeded subset for large n)."""
    keep = subsample_indices(len(Z), seed)
    note = None
    if keep is not None:
        Z, labels, note = Z[keep], labels[keep], subset_note(len(Z))
        groups = None if groups is None else np.unique(groups[keep], return_inverse=True)[1]
    return silhouette_samples(Z, labels), groups, note
