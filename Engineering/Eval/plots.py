"""Figures of the benchmark report, returned as PNG bytes (matplotlib, Agg backend).

- one bar plot per metric (grouped into one image per metric family): runs side
  by side, 95% CI as error bars, the chance level as a dashed line;
- one radar chart across runs. Each axis is one metric z-scored across the runs
  shown ((value - mean) / standard deviation over the runs; sign flipped for
  lower-is-better metrics) so outward is always better, as the AllenCell benchmark
  (seed 003) draws it, and the chart says so. It shows relative standing only; the
  table and bar plots hold the absolute values with their CIs.
"""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)
import numpy as np  # noqa: E402

from Engineering.Eval.result import LOWER, MetricResult  # noqa: E402

BASELINE_COLOUR = "#9e9e9e"


def _png(fig, tight: bool = False) -> bytes:
    buf = io.BytesIO()
    # A tight bounding box keeps legends placed outside the axes (slower, so only when asked).
    fig.savefig(buf, format="png", dpi=80, bbox_inches="tight" if tight else None)
    plt.close(fig)
    return buf.getvalue()


def bar_plots(metrics: dict[str, dict[str, MetricResult]], baseline_names=(), ncols: int = 4) -> bytes:
    """One panel per metric (metric -> run -> result): bars with CI error bars, chance as a dashed line.

    Metrics of one family go in one figure: one image per family keeps the report small and fast.
    """
    n = len(metrics)
    ncols = min(ncols, n)
    nrows = -(-n // ncols)
    n_runs = max(len(per_run) for per_run in metrics.values())
    width = max(3.0, 0.45 * n_runs + 1.4)
    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, 2.9 * nrows), squeeze=False)
    for ax, (metric, per_run) in zip(axes.ravel(), metrics.items()):
        _bars(ax, metric, per_run, baseline_names)
    for ax in axes.ravel()[n:]:
        ax.set_axis_off()
    fig.tight_layout()
    return _png(fig)


def _bars(ax, metric: str, per_run: dict[str, MetricResult], baseline_names) -> None:
    names = list(per_run)
    values = np.array([np.nan if r.value is None else r.value for r in per_run.values()], dtype=float)
    low = np.array([np.nan if r.ci_low is None else r.ci_low for r in per_run.values()], dtype=float)
    high = np.array([np.nan if r.ci_high is None else r.ci_high for r in per_run.values()], dtype=float)
    err = np.nan_to_num(np.vstack([np.clip(values - low, 0, None), np.clip(high - values, 0, None)]))
    colours = [BASELINE_COLOUR if n in baseline_names else f"C{i % 10}" for i, n in enumerate(names)]
    x = np.arange(len(names))
    ax.bar(x, np.nan_to_num(values), yerr=err, color=colours, capsize=3, edgecolor="black", linewidth=0.4)
    for i, v in enumerate(values):
        if not np.isfinite(v):
            ax.text(i, 0, "skipped", ha="center", va="bottom", rotation=90, fontsize=7)
    chance = next((r.chance for r in per_run.values() if r.chance is not None), None)
    if chance is not None:
        ax.axhline(chance, color="black", linestyle="--", linewidth=0.8, label="chance")
        ax.legend(fontsize=6, loc="best")
    direction = next(iter(per_run.values())).direction
    ax.set_title(f"{metric} ({'lower' if direction == LOWER else 'higher'} is better)", fontsize=8)
    ax.set_xticks(x, names, rotation=30, ha="right", fontsize=7)
    ax.tick_params(axis="y", labelsize=7)


def radar_axes(results: dict[str, dict[str, MetricResult]]) -> tuple[list[str], np.ndarray]:
    """(metrics, z-scores runs x metrics, outward = better) over the metrics that two runs or more have; a run
    without a metric (not applicable to it, e.g. a decoder metric of an encoder-only model or of a baseline) has
    NaN there and is left out of that metric's z-score; a metric on which every run is equal scores 0."""
    runs = list(results)

    def value(r, m):
        res = results[r].get(m)
        return res.value if res is not None and res.value is not None and np.isfinite(res.value) else np.nan

    names = list(dict.fromkeys(m for r in runs for m in results[r]))
    metrics = [m for m in names if sum(np.isfinite(value(r, m)) for r in runs) >= 2]
    scores = np.full((len(runs), len(metrics)), np.nan)
    for j, m in enumerate(metrics):
        v = np.array([value(r, m) for r in runs], dtype=float)
        ok = np.isfinite(v)
        sd = v[ok].std()
        z = (v[ok] - v[ok].mean()) / sd if sd > 0 else np.zeros(ok.sum())
        direction = next(results[r][m].direction for r in runs if m in results[r])
        scores[ok, j] = -z if direction == LOWER else z
    return metrics, scores


def radar_chart(results: dict[str, dict[str, MetricResult]], baseline_names=()) -> bytes | None:
    """The radar chart, or None when fewer than 3 metrics are available for two runs or more. A run's line has a
    gap (and no fill) at the metrics it does not have; those axes are marked with *."""
    metrics, scores = radar_axes(results)
    if len(metrics) < 3 or len(results) < 2:
        return None
    angles = np.linspace(0, 2 * np.pi, len(metrics), endpoint=False)
    closed = np.append(angles, angles[0])
    fig, ax = plt.subplots(figsize=(7.5, 7.5), subplot_kw={"projection": "polar"})
    dashes = iter([":", "--", "-."])
    for i, (run, row) in enumerate(zip(results, scores)):
        style = (
            {"color": BASELINE_COLOUR, "linestyle": next(dashes, ":")}
            if run in baseline_names
            else {"color": f"C{i % 10}"}
        )
        ring = np.append(row, row[0])
        ax.plot(closed, ring, linewidth=1.4, label=run, marker="o", markersize=2.5, **style)
        if np.isfinite(row).all():
            ax.fill(closed, ring, alpha=0.08, color=style["color"])
    partial = ~np.isfinite(scores).all(0)
    labels = [m.replace("/", "\n") + (" *" if p else "") for m, p in zip(metrics, partial)]
    ax.set_xticks(angles, labels, fontsize=6)
    lim = max(2.0, float(np.ceil(np.nanmax(np.abs(scores)) * 2) / 2)) if np.isfinite(scores).any() else 2.0
    ax.set_yticks([-lim, 0, lim], [f"{-lim:g} sd", "mean", f"+{lim:g} sd"], fontsize=6)
    ax.set_rlabel_position(360 / len(metrics) / 2)  # between the first two axes, not on one
    ax.set_ylim(-lim, lim * 1.05)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.05, 1.0))
    ax.set_title(
        "z-score of each metric across the runs compared (outward = better)"
        + ("\n* not every run has this metric: a gap, z-scored over the runs that have it" if partial.any() else ""),
        fontsize=9,
        pad=18,
    )
    return _png(fig, tight=True)
