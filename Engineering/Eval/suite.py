"""Score every representation on every applicable metric: the benchmark's core loop.

Input: latents already aligned on common samples (samples.py), targets from the
label tables (labels.py), an optional batch target and optional group codes.
Output: run -> metric -> MetricResult. Label-specific metrics are named
``<family>/<label>``. Baselines (baselines.py) are added on the same samples.

A metric that fails on odd data (too few samples, a degenerate split) becomes a
skipped record with the reason, so one bad target never stops the report;
``Settings.debug`` re-raises instead.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from threadpoolctl import threadpool_limits

from Engineering.data.labels import CATEGORICAL, Target
from Engineering.errors import UserError
from Engineering.Eval import (
    archetypes,
    baselines,
    batch_effects,
    compactness,
    knn,
    outliers,
    probes,
    regression,
    retrieval,
)
from Engineering.Eval.result import MetricResult

# family -> (direction, description), for the report and for skipped records.
METRICS = {
    **probes.METRICS,
    **regression.METRICS,
    **knn.METRICS,
    **retrieval.METRICS,
    **compactness.METRICS,
    **batch_effects.METRICS,
    **archetypes.METRICS,
    **outliers.METRICS,
}


@dataclass(frozen=True)
class Settings:
    n_boot: int = 1000
    seed: int = 0
    n_splits: int = 5
    n_repeats: int = 3  # CV repeats of the linear probes
    knn_k: int = 15
    n_perm: int = 200  # retrieval permutations
    id_ks: tuple[int, ...] = compactness.DEFAULT_KS
    # BLAS threads during scoring: the many small per-fold fits spend more on waking threads
    # than they gain (1 thread was ~10x faster on 2 busy cores, even for 5000 x 512 probes).
    # None keeps the library default.
    blas_threads: int | None = 1
    debug: bool = False
    n_archetypes: int = 0  # archetypal analysis with this many archetypes (0 = off)


def run_benchmark(
    latents: dict[str, np.ndarray],
    targets: list[Target],
    batch: Target | None = None,
    groups: np.ndarray | None = None,
    settings: Settings = Settings(),
    pixels: np.ndarray | None = None,
    log: Callable[[str], None] = lambda _: None,
    outlier: Target | None = None,
) -> dict[str, dict[str, MetricResult]]:
    """Scores of each run plus the baselines; ``pixels`` (n_samples, ...) enables the PCA-pixel baseline;
    ``outlier`` (known outliers, outlier_target) the outlier metrics (the reference's classifier and our AUROC)."""
    if not latents:
        raise UserError("no latents to benchmark")
    clash = set(latents) & set(baselines.NAMES)
    if clash:
        raise UserError(f"run name(s) {', '.join(sorted(clash))} are reserved for baselines")
    n = {len(Z) for Z in latents.values()}
    if len(n) != 1:
        raise UserError(f"runs are not aligned on the same samples (sizes {sorted(n)})")
    n = n.pop()
    dim = min(Z.shape[1] for Z in latents.values())
    reps = dict(latents)
    reps[baselines.RANDOM] = baselines.random_gaussian_features(n, dim, settings.seed)
    if pixels is not None:
        if len(pixels) != n:
            raise UserError(f"pixels have {len(pixels)} rows for {n} samples")
        reps[baselines.PCA_PIXELS] = baselines.pca_pixel_features(pixels, dim, settings.seed)
    results = {}
    with threadpool_limits(settings.blas_threads, user_api="blas"):
        for name, Z in reps.items():
            log(f"scoring {name}: {Z.shape[0]} samples x {Z.shape[1]} dims")
            results[name] = evaluate_representation(
                np.asarray(Z, dtype=np.float64), targets, batch, groups, settings, outlier
            )
    return results


def evaluate_representation(
    Z: np.ndarray,
    targets: list[Target],
    batch: Target | None,
    groups: np.ndarray | None,
    s: Settings,
    outlier: Target | None = None,
) -> dict[str, MetricResult]:
    out: dict[str, MetricResult] = {}

    def record(metric: str, fn: Callable[[], MetricResult | dict[str, MetricResult]], families: list[str]):
        try:
            res = fn()
        except Exception as exc:  # noqa: BLE001 - a failed metric is reported, not fatal (see module doc)
            if s.debug:
                raise
            for fam in families:
                label = metric.partition("/")[2]
                out[f"{fam}/{label}" if label else fam] = MetricResult.skip(METRICS[fam][0], _reason(exc))
            return
        if isinstance(res, dict):
            label = metric.partition("/")[2]
            out.update({f"{fam}/{label}": r for fam, r in res.items()})
        else:
            out[metric] = res

    record(
        "intrinsic_dimension",
        lambda: compactness.intrinsic_dimension(Z, s.n_boot, s.seed, groups, s.id_ks),
        ["intrinsic_dimension"],
    )
    record("pca_components_90", lambda: compactness.pca_components(Z, s.n_boot, s.seed, groups), ["pca_components_90"])
    if s.n_archetypes:
        record("archetype_r2", lambda: archetypes.archetype_r2(Z, s.n_archetypes, s.n_boot, s.seed), ["archetype_r2"])

    if outlier is not None:
        Zo, y, _ = _subset(Z, outlier, groups)
        record(
            f"outlier_auroc/{outlier.name}",
            lambda: outliers.outlier_auroc(Zo, y, s.n_boot, s.seed, s.id_ks),
            ["outlier_auroc"],
        )
        record(
            f"outlier_detection/{outlier.name}",
            lambda: outliers.outlier_detection(Zo, y, s.n_boot, s.seed),
            ["outlier_detection"],
        )

    for t in targets:
        Zt, y, g = _subset(Z, t, groups)
        if t.kind == CATEGORICAL:
            record(
                f"probe/{t.name}",
                lambda: probes.linear_probe_classification(Zt, y, g, s.n_splits, s.n_repeats, s.n_boot, s.seed),
                ["probe_balanced_accuracy", "probe_accuracy"],
            )
            record(
                f"knn_accuracy/{t.name}",
                lambda: knn.knn_accuracy(Zt, y, g, s.knn_k, s.n_splits, s.n_boot, s.seed),
                ["knn_accuracy"],
            )
            record(
                f"retrieval_map/{t.name}",
                lambda: retrieval.retrieval_map(Zt, y, g, s.n_boot, s.n_perm, s.seed),
                ["retrieval_map"],
            )
            record(
                f"bio_silhouette/{t.name}",
                lambda: batch_effects.bio_silhouette(Zt, y, g, s.n_boot, s.seed),
                ["bio_silhouette"],
            )
        else:
            record(
                f"r2/{t.name}",
                lambda: regression.linear_regression_r2(
                    Zt, y.astype(float), g, s.n_splits, s.n_repeats, s.n_boot, s.seed
                ),
                ["r2"],
            )
        _annotate(out, t)

    if batch is not None:
        Zb, b, g = _subset(Z, batch, groups)
        record(
            f"batch_knn_balanced_accuracy/{batch.name}",
            lambda: batch_effects.batch_knn_accuracy(Zb, b, g, s.knn_k, s.n_splits, s.n_boot, s.seed),
            ["batch_knn_balanced_accuracy"],
        )
        record(
            f"batch_silhouette/{batch.name}",
            lambda: batch_effects.batch_silhouette(Zb, b, g, s.n_boot, s.seed),
            ["batch_silhouette"],
        )
        record(
            f"batch_ilisi/{batch.name}",
            lambda: batch_effects.batch_ilisi(Zb, b, g, s.knn_k, s.n_boot, s.seed),
            ["batch_ilisi"],
        )
        _annotate(out, batch)
    return out


def _annotate(out: dict[str, MetricResult], target: Target) -> None:
    """Carry a target's note (e.g. rare classes left out) onto its metrics."""
    if target.note:
        for key, res in out.items():
            if key.endswith(f"/{target.name}") and not res.note:
                res.note = target.note


def _subset(Z: np.ndarray, target: Target, groups: np.ndarray | None):
    """The samples usable for a target, with group codes renumbered 0..G-1."""
    m = target.mask
    g = None if groups is None else np.unique(groups[m], return_inverse=True)[1]
    return Z[m], target.values[m], g


def _reason(exc: Exception) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
