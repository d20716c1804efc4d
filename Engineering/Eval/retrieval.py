"""Replicate retrieval: can a sample's nearest neighbours find others with its label?

Each sample is a query; all other samples (except its own group, when groups are
given) are ranked by cosine similarity; the average precision (AP) of finding
the samples that share the query's label is averaged over queries (mAP). This is
the replicate-retrieval score of image-based profiling (Kalinin et al., "A
versatile information retrieval framework for evaluating profile strength and
similarity", bioRxiv 2024; the copairs package). Higher is better; the chance
level is the mean share of relevant candidates (what a random ranking scores).

Significance: a permutation test that shuffles labels (whole groups at once when
labels are constant within groups, so the null keeps the group structure) and
recomputes mAP on the same rankings; p = (1 + #{null >= observed}) / (1 + n_perm)
(Phipson & Smyth, 2010). The CI bootstraps the per-query APs.
"""

from __future__ import annotations

import numpy as np

from Engineering.Eval.bootstrap import bootstrap_ci, weighted_mean
from Engineering.Eval.result import HIGHER, MetricResult

METRICS = {
    "retrieval_map": (
        HIGHER,
        "Mean average precision of retrieving same-label samples by cosine similarity, "
        "with a permutation p-value. Higher is better; chance = mean share of same-label candidates.",
    ),
}
MAX_QUERIES = 2000  # rankings cost O(queries * n log n)
MAX_PERMUTATION_QUERIES = 300  # the null is recomputed n_perm times on these
_CHUNK = 256


def rankings(Z: np.ndarray, queries: np.ndarray, groups: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(order, n_candidates): per query, all samples by decreasing cosine similarity; the first
    n_candidates entries are the eligible ones (not the query, not its group), the rest are
    replaced by ``len(Z)``, an index that ``average_precisions`` maps to "never relevant"."""
    norm = np.linalg.norm(Z, axis=1, keepdims=True)
    Zn = np.divide(Z, norm, out=np.zeros_like(Z, dtype=float), where=norm > 0)
    orders, counts = [], []
    for start in range(0, len(queries), _CHUNK):
        q = queries[start : start + _CHUNK]
        sim = Zn[q] @ Zn.T
        excluded = np.zeros_like(sim, dtype=bool)
        excluded[np.arange(len(q)), q] = True
        if groups is not None:
            excluded |= groups[None, :] == groups[q][:, None]
        sim[excluded] = -np.inf
        order = np.argsort(-sim, axis=1, kind="stable").astype(np.int32)
        n_cand = (~excluded).sum(axis=1)
        order[np.arange(order.shape[1])[None, :] >= n_cand[:, None]] = len(Z)
        orders.append(order)
        counts.append(n_cand)
    return np.concatenate(orders), np.concatenate(counts)


def average_precisions(
    order: np.ndarray, labels: np.ndarray, query_labels: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(AP, #relevant candidates) per query; AP is NaN when no candidate shares the label.

    AP = (1 / #relevant) * sum over relevant ranks r of (#relevant up to r) / r.
    """
    padded = np.append(labels, -1).astype(np.int32)  # index len(labels): an excluded slot
    inv_rank = 1.0 / np.arange(1, order.shape[1] + 1, dtype=np.float32)
    aps, n_rels = [], []
    for start in range(0, len(order), _CHUNK):
        rows = slice(start, start + _CHUNK)
        rel = padded[order[rows]] == query_labels[rows, None]
        hits = np.cumsum(rel, axis=1, dtype=np.float32)  # exact for counts below 2**24
        n_rel = hits[:, -1].astype(np.int64)
        hits *= rel
        with np.errstate(invalid="ignore", divide="ignore"):
            aps.append(np.where(n_rel > 0, (hits @ inv_rank) / n_rel, np.nan))
        n_rels.append(n_rel)
    return np.concatenate(aps), np.concatenate(n_rels)


def retrieval_map(
    Z: np.ndarray, labels: np.ndarray, groups: np.ndarray | None, n_boot: int, n_perm: int, seed: int
) -> MetricResult:
    labels = np.unique(labels, return_inverse=True)[1]
    rng = np.random.default_rng(seed)
    n = len(Z)
    queries = np.arange(n) if n <= MAX_QUERIES else np.sort(rng.choice(n, MAX_QUERIES, replace=False))
    order, n_cand = rankings(Z, queries, groups)
    ap, relevant = average_precisions(order, labels, labels[queries])
    with np.errstate(invalid="ignore", divide="ignore"):
        chance = float(np.nanmean(np.where(relevant > 0, relevant / n_cand, np.nan)))
    q_groups = None if groups is None else np.unique(groups[queries], return_inverse=True)[1]
    ci = bootstrap_ci(weighted_mean(ap), len(ap), n_boot, seed, q_groups)
    p_value = _permutation_p(order, labels, queries, groups, n_perm, rng)
    note = None if len(queries) == n else f"{len(queries)} random queries of {n} samples"
    return MetricResult.from_ci(ci, HIGHER, int(np.isfinite(ap).sum()), chance=chance, p_value=p_value, note=note)


def _permutation_p(order, labels, queries, groups, n_perm, rng) -> float | None:
    if n_perm <= 0:
        return None
    sub = np.arange(len(queries))
    if len(sub) > MAX_PERMUTATION_QUERIES:
        sub = np.sort(rng.choice(len(sub), MAX_PERMUTATION_QUERIES, replace=False))
    order, queries = order[sub], queries[sub]
    observed = np.nanmean(average_precisions(order, labels, labels[queries])[0])
    shuffle = _label_shuffler(labels, groups, rng)
    null = np.empty(n_perm)
    for i in range(n_perm):
        perm = shuffle()
        null[i] = np.nanmean(average_precisions(order, perm, perm[queries])[0])
    return float((1 + np.sum(null >= observed - 1e-12)) / (1 + n_perm))


def _label_shuffler(labels: np.ndarray, groups: np.ndarray | None, rng: np.random.Generator):
    """Returns a function drawing one permuted label vector (group-wise when labels are per group)."""
    if groups is not None:
        group_label = np.full(int(groups.max()) + 1, -1)
        group_label[groups] = labels
        if np.array_equal(group_label[groups], labels):  # constant within each group
            return lambda: rng.permutation(group_label)[groups]
    return lambda: rng.permutation(labels)
