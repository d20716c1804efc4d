"""Reference representations scored on exactly the same samples as the runs.

- ``baseline_random``: i.i.d. standard Gaussian features. They carry no
  information, so every metric on them is the empirical chance level (including
  the small pessimistic bias of cross-validation).
- ``baseline_pca_pixels``: PCA of the raw input pixels (flattened, centred) with
  as many components as the smallest latent size among the runs. A learned
  representation should beat this linear, untrained compression (the classical
  eigen-image baseline, Turk & Pentland, J. Cogn. Neurosci. 1991). PCA is fitted on
  all samples, as an autoencoder sees all of them, because it uses no labels.
"""

from __future__ import annotations

import numpy as np
from sklearn.decomposition import PCA

RANDOM = "baseline_random"
PCA_PIXELS = "baseline_pca_pixels"
NAMES = (RANDOM, PCA_PIXELS)


def random_gaussian_features(n: int, dim: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, dim))


def pca_pixel_features(pixels: np.ndarray, n_components: int, seed: int) -> np.ndarray:
    """Project flattened pixels (n, ...) on their first ``n_components`` principal components."""
    X = np.asarray(pixels, dtype=np.float64).reshape(len(pixels), -1)
    n_components = max(1, min(n_components, X.shape[0], X.shape[1]))
    # The randomized solver keeps this fast for wide (many-pixel) inputs and is seeded.
    solver = "randomized" if n_components < 0.8 * min(X.shape) else "full"
    return PCA(n_components=n_components, svd_solver=solver, random_state=seed).fit_transform(X)
