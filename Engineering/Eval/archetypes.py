"""Archetypal analysis of the latents (Cutler & Breiman, Technometrics 1994; used by seed 003 to show the
extremes of a representation): k archetypes, each a convex combination of samples, such that every sample is
approximated by a convex combination of the archetypes, X ~ A Z with Z = B X and the rows of A and B on the
simplex. Fitted by alternating constrained least squares (each convex combination by NNLS with the sum-to-one
constraint as a heavily weighted extra equation). The metric is the variance the archetypes explain,
1 - ||X - A Z||^2 / ||X - mean||^2 (higher is better at a given k); the CI bootstraps samples with the
archetypes fixed.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import nnls

from Engineering.Eval.bootstrap import bootstrap_ci
from Engineering.Eval.result import HIGHER, MetricResult

METRICS = {
    "archetype_r2": (
        HIGHER,
        "Latent variance explained by k archetypes (convex combinations). Higher is better at the same k.",
    )
}
_WEIGHT = 200.0  # weight of the sum-to-one equation, relative to data in units of their spread


def convex_weights(points: np.ndarray, vertices: np.ndarray) -> np.ndarray:
    """(n, k) simplex weights w minimising ||p - w V|| for each point p (rows of ``points``)."""
    M = np.vstack([vertices.T, np.full((1, len(vertices)), _WEIGHT)])
    out = np.empty((len(points), len(vertices)))
    for i, p in enumerate(points):
        out[i] = nnls(M, np.append(p, _WEIGHT))[0]
    return out / out.sum(1, keepdims=True).clip(1e-12)


def fit_archetypes(X: np.ndarray, k: int, n_iter: int = 60, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(archetypes Z (k, d), weights A (n, k)). Starts from k samples spread apart (furthest-point sampling)."""
    X = np.asarray(X, dtype=float)
    if not 2 <= k < len(X):
        raise ValueError(f"archetypes need 2 <= k < n samples, got k={k}, n={len(X)}")
    scale = X.std() or 1.0
    Xs = (X - X.mean(0)) / scale
    rng = np.random.default_rng(seed)
    idx = [int(rng.integers(len(Xs)))]
    for _ in range(k - 1):
        idx.append(int(np.argmax(np.min(np.linalg.norm(Xs[:, None] - Xs[idx][None], axis=-1), axis=1))))
    Z = Xs[idx].copy()
    for _ in range(n_iter):
        A = convex_weights(Xs, Z)
        Z_free = np.linalg.lstsq(A, Xs, rcond=None)[0]  # the best archetypes for these weights...
        B = convex_weights(Z_free, Xs)  # ...pulled back into the convex hull of the data
        Z = B @ Xs
    A = convex_weights(Xs, Z)
    return Z * scale + X.mean(0), A


def archetype_r2(X: np.ndarray, k: int, n_boot: int, seed: int) -> MetricResult:
    X = np.asarray(X, dtype=float)
    Z, A = fit_archetypes(X, k, seed=seed)
    resid = ((X - A @ Z) ** 2).sum(1)
    total = ((X - X.mean(0)) ** 2).sum(1)

    def stat(w: np.ndarray) -> np.ndarray:
        return 1 - (w @ resid) / (w @ total)

    return MetricResult.from_ci(bootstrap_ci(stat, len(X), n_boot, seed), HIGHER, len(X), note=f"k = {k}")
