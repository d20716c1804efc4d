"""Machine-readable benchmark results: metrics.json (run -> metric -> record) and metrics.csv (long).

Both are written atomically; NaN is written as null / an empty cell.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from Engineering.Eval.result import MetricResult
from Engineering.io.atomic import atomic_path, write_text

Results = dict[str, dict[str, MetricResult]]
CSV_COLUMNS = [
    "run",
    "metric",
    "family",
    "label",
    "value",
    "ci_low",
    "ci_high",
    "direction",
    "n",
    "chance",
    "p_value",
    "note",
    "skipped",
]


def metrics_dict(results: Results) -> dict:
    return {run: {metric: res.to_dict() for metric, res in metrics.items()} for run, metrics in results.items()}


def metrics_frame(results: Results) -> pd.DataFrame:
    rows = []
    for run, metrics in results.items():
        for metric, res in metrics.items():
            family, _, label = metric.partition("/")
            rows.append({"run": run, "metric": metric, "family": family, "label": label, **res.to_dict()})
    return pd.DataFrame(rows).reindex(columns=CSV_COLUMNS)


def write_metrics_json(path: str | Path, results: Results) -> None:
    write_text(path, json.dumps(metrics_dict(results), indent=2, allow_nan=False) + "\n")


def write_metrics_csv(path: str | Path, results: Results) -> None:
    with atomic_path(path) as tmp:
        metrics_frame(results).to_csv(tmp, index=False)
