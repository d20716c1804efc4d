"""Compactness of a representation: how many dimensions it really uses.

- Intrinsic dimension by maximum likelihood (Levina & Bickel, NIPS 2004): for a
  point with neighbour distances T_1 <= ... <= T_k,
  m_k = (k - 2) / sum_{j<k} log(T_k / T_j). The (k - 2) numerator (instead of the
  original k - 1) makes each per-point estimate unbiased for the inverse under
  the local Poisson model (MacKay & Ghahramani's comment on Levina-Bickel, 2005).
  Per-point estimates are averaged over points and over a few k; the CI
  bootstraps the per-point estimates (neighbours are found once: resampling
  points with replacement would create zero distances).
- Number of principal components that explain 90% of the variance of the
  (centred, unscaled) latents; the CI refits the PCA on bootstrap resamples and is
  re-centred on the estimate (duplicated samples in a resample spread the
  eigenvalues, so raw resamples need systematically fewer components).

Lower is better for both: a representation that explains the data with fewer
degrees of freedom is more compact (as in the AllenCell benchmark, seed 003).
The intrinsic dimension is local: with many samples per subject (e.g. cine
frames) the nearest neighbours are mostly the subject's own samples and the
estimate describes within-subject variation; ``--aggregate patient`` measures
across subjects instead.
"""

from __future__ import annotations

import numpy as np
from sklearn.neighbors import NearestNeighbors

from Engineering.Eval.bootstrap import bootstrap_ci, weighted_mean
from Engineering.Eval.result import LOWER, MetricResult
from Engineering.Eval.subsample import subsample_indices, subset_note

METRICS = {
    "intrinsic_dimension": (
        LOWER,
        "Levina-Bickel MLE intrinsic dimension ((k-2) correction, mean over k). Lower is better (more compact).",
    ),
    "pca_components_90": (
        LOWER,
        "Principal components needed for 90% of the latent variance "
        "(CI from at most 200 resamples). Lower is better (more compact).",
    ),
}
DEFAULT_KS = (10, 15, 20)
MAX_PCA_RESAMPLES = 200  # each resample is an O(n d^2) covariance


def pointwise_intrinsic_dimension(Z: np.ndarray, ks=DEFAULT_KS) -> np.ndarray:
    """Per-point MLE intrinsic dimension averaged over ``ks``; NaN where distances tie at 0."""
    k_max = max(ks)
    if len(Z) <= k_max:
        raise ValueError(f"intrinsic dimension needs more than {k_max} samples, got {len(Z)}")
    dist, _ = NearestNeighbors(n_neighbors=k_max + 1).fit(Z).kneighbors(Z)
    dist = dist[:, 1:]  # drop the point itself
    estimates = []
    with np.errstate(divide="ignore", invalid="ignore"):
        logs = np.log(dist)
        for k in ks:
            s = np.sum(logs[:, k - 1 : k] - logs[:, : k - 1], axis=1)
            estimates.append(np.where(np.isfinite(s) & (s > 0), (k - 2) / s, np.nan))
    return np.mean(estimates, axis=0)


def intrinsic_dimension(
    Z: np.ndarray, n_boot: int, seed: int, groups: np.ndarray | None = None, ks=DEFAULT_KS
) -> MetricResult:
    Z, groups, note = _subsample(Z, groups, seed)
    per_point = pointwise_intrinsic_dimension(Z, ks)
    n_ok = int(np.isfinite(per_point).sum())
    if n_ok < len(per_point):
        note = _join(note, f"{len(per_point) - n_ok} duplicate points left out")
    return MetricResult.from_ci(
        bootstrap_ci(weighted_mean(per_point), len(Z), n_boot, seed, groups), LOWER, n_ok, note=note
    )


def components_for_variance(Z: np.ndarray, fraction: float = 0.9):
    """Statistic: #components whose cumulative explained variance first exceeds ``fraction``."""
    Z = np.asarray(Z, dtype=float)
    Z = Z - Z.mean(axis=0)  # so that E[zz^T] - mean mean^T below does not cancel badly

    def stat(w: np.ndarray) -> np.ndarray:
        out = np.empty(len(w))
        for i, wi in enumerate(w.astype(float)):
            sw = wi.sum()
            mean = wi @ Z / sw
            cov = (Z * wi[:, None]).T @ Z / sw - np.outer(mean, mean)
            eig = np.clip(np.linalg.eigvalsh(cov)[::-1], 0, None)
            total = eig.sum()
            if total <= 0:
                out[i] = np.nan
                continue
            # Same rule as sklearn's PCA(n_components=fraction).
            out[i] = np.searchsorted(np.cumsum(eig) / total, fraction, side="right") + 1
        return np.minimum(out, Z.shape[1])

    return stat


def pca_components(
    Z: np.ndarray, n_boot: int, seed: int, groups: np.ndarray | None = None, fraction: float = 0.9
) -> MetricResult:
    Z, groups, note = _subsample(Z, groups, seed)
    ci = bootstrap_ci(
        components_for_variance(Z, fraction), len(Z), min(n_boot, MAX_PCA_RESAMPLES), seed, groups, recentre=True
    )
    return MetricResult.from_ci(ci, LOWER, len(Z), note=note)


def _subsample(Z: np.ndarray, groups: np.ndarray | None, seed: int):
    keep = subsample_indices(len(Z), seed)
    if keep is None:
        return Z, groups, None
    groups = None if groups is None else np.unique(groups[keep], return_inverse=True)[1]
    return Z[keep], groups, subset_note(len(Z))


def _join(a: str | None, b: str) -> str:
    return b if not a else f"{a}; {b}"
