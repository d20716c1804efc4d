"""Latent usage (model-dependent): does the decoder's output depend on the latent?

Each test sample x_i is reconstructed three ways, everything but the latent being x_i's own (DiffAE's x_T
inverted with x_i's own z, a rotation-invariant model's pose): with its own latent z_i, with another sample's
latent z_{i+1}, and with the mean latent. With d the distance in reconstruction space (mean squared error for
images, Chamfer for point clouds) and s_i = d(x_{i+1}, x_i) the distance between the two samples themselves,

    latent_usage_swap = (d(R(x_i; z_{i+1}), x_i) - d(R(x_i; z_i), x_i)) / s_i
    latent_usage_mean = (d(R(x_i; z_mean), x_i) - d(R(x_i; z_i), x_i)) / s_i

0 means the decoder ignores the latent (a semantic encoder that learned nothing: a failure DiffAE users
report, where the UNet reconstructs from x_T alone); about 1 means a swapped latent moves the reconstruction as
far as the other sample is. Higher is better. The CI bootstraps the samples.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from Engineering.Eval.bootstrap import bootstrap_ci, weighted_mean
from Engineering.Eval.result import HIGHER, MetricResult

METRICS = {
    "latent_usage_swap": (
        HIGHER,
        "Reconstruction error with another sample's latent minus with its own, over the "
        "two samples' distance (0 = the decoder ignores the latent). Higher is better.",
    ),
    "latent_usage_mean": (
        HIGHER,
        "Reconstruction error with the mean latent minus with its own, over the distance "
        "to another sample (0 = the decoder ignores the latent). Higher is better.",
    ),
}
IGNORED = 0.05  # below this the report says the decoder ignores the latent


def mse(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-sample mean squared error of two (n, ...) arrays."""
    return ((np.asarray(a, float) - np.asarray(b, float)) ** 2).reshape(len(a), -1).mean(1)


def pointwise_latent_usage(
    render: Callable[[np.ndarray, Sequence[np.ndarray]], Sequence[np.ndarray]],
    inputs: np.ndarray,
    Z: np.ndarray,
    target: np.ndarray,
    distance: Callable[[np.ndarray, np.ndarray], np.ndarray] = mse,
) -> dict[str, np.ndarray]:
    """Per-sample errors. ``render(inputs, [codes...]) -> [reconstructions...]``; ``target``: the inputs in
    reconstruction space (images themselves; a cloud's xyz); ``distance(a, b)`` per sample."""
    n = len(Z)
    if n < 2:
        raise ValueError("latent usage needs at least 2 samples")
    other = np.roll(np.arange(n), -1)  # sample i gets sample i+1's latent
    own, swap, mean = render(inputs, [Z, Z[other], np.repeat(Z.mean(0, keepdims=True), n, 0)])
    e_own, e_swap, e_mean = (distance(r, target) for r in (own, swap, mean))
    between = distance(target[other], target)
    if not (between > 0).all():
        raise ValueError("two consecutive samples are identical: their distance is 0")
    return {"own": e_own, "swap": e_swap, "mean": e_mean, "between": between}


def latent_usage(
    render, inputs: np.ndarray, Z: np.ndarray, target: np.ndarray, n_boot: int, seed: int, distance=mse
) -> dict[str, MetricResult]:
    e = pointwise_latent_usage(render, inputs, Z, target, distance)
    errors = (
        f"error with own latent {e['own'].mean():.4g}, another's {e['swap'].mean():.4g}, the mean latent "
        f"{e['mean'].mean():.4g}; between samples {e['between'].mean():.4g}"
    )
    out = {}
    for name, key in (("latent_usage_swap", "swap"), ("latent_usage_mean", "mean")):
        v = (e[key] - e["own"]) / e["between"]
        res = MetricResult.from_ci(bootstrap_ci(weighted_mean(v), len(v), n_boot, seed), HIGHER, len(v), note=errors)
        if res.value is not None and res.value < IGNORED:
            res.note = f"the decoder ignores the latent (usage {res.value:.3f} < {IGNORED}); " + errors
        out[name] = res
    return out
