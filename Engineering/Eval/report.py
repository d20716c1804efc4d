"""report.html: one self-contained page (inline CSS, images as base64 PNG, no links out).

Sections: what was compared (runs, samples, settings), notes (samples left out,
targets skipped), the metric table (value [95% CI], best run in bold), what
each metric means and which direction is better, one bar plot per metric and
the radar chart across runs.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path

import numpy as np

from Engineering.Eval import plots
from Engineering.Eval.result import LOWER, MetricResult
from Engineering.io.atomic import write_text

Results = dict[str, dict[str, MetricResult]]

_CSS = """
body{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:1400px}
table{border-collapse:collapse;font-size:13px;margin:1em 0}
th,td{border:1px solid #ccc;padding:3px 8px;text-align:right}
th:first-child,td:first-child{text-align:left}
th{background:#f2f2f2} th.baseline{color:#888}
td.skip{color:#999;font-style:italic} td.best{font-weight:bold;background:#eef7ee}
.ci{color:#666;font-size:11px} .grid{display:flex;flex-wrap:wrap;gap:12px} .grid img{border:1px solid #eee}
.note{color:#8a5300} code{background:#f5f5f5;padding:0 3px}
"""


def render_report(
    results: Results,
    descriptions: dict[str, tuple[str, str]],
    summary: dict[str, str],
    notes: list[str],
    baseline_names=(),
) -> str:
    """The HTML page (a string)."""
    runs = list(results)
    metrics = list(dict.fromkeys(m for per in results.values() for m in per))
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>Representation benchmark</title>",
        f"<style>{_CSS}</style></head><body><h1>Representation benchmark</h1>",
    ]
    parts.append(
        "<table>" + "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in summary.items()) + "</table>"
    )
    if notes:
        parts.append("<h2>Notes</h2><ul>" + "".join(f"<li class='note'>{_e(n)}</li>" for n in notes) + "</ul>")
    parts.append(
        "<h2>Metrics</h2><p>Value with its bootstrap 95% confidence interval; the best run per row in "
        "bold (↑ higher / ↓ lower is better). Grey runs are baselines on the same samples.</p>"
    )
    parts.append(_table(results, runs, metrics, baseline_names))
    parts.append("<h2>What the metrics mean</h2><table><tr><th>metric</th><th>better</th><th>definition</th></tr>")
    for fam in dict.fromkeys(m.partition("/")[0] for m in metrics):
        direction, text = descriptions.get(fam, ("", ""))
        parts.append(
            f"<tr><td><code>{_e(fam)}</code></td><td>{_e(direction)}</td>"
            f"<td style='text-align:left'>{_e(text)}</td></tr>"
        )
    parts.append("</table>")
    parts.append("<h2>Radar across runs</h2>")
    radar = _safe_png(lambda: plots.radar_chart(results, baseline_names))
    no_radar = "radar chart needs at least 2 runs and 3 metrics computed for all"
    parts.append(
        _img(radar, "radar chart") if isinstance(radar, bytes) else f"<p class='note'>{_e(radar or no_radar)}</p>"
    )
    parts.append("<h2>Per-metric comparison</h2><div class='grid'>")
    for fam in dict.fromkeys(m.partition("/")[0] for m in metrics):
        panels = {m: {r: results[r][m] for r in runs if m in results[r]} for m in metrics if m.partition("/")[0] == fam}
        png = _safe_png(lambda: plots.bar_plots(panels, baseline_names))
        parts.append(_img(png, fam) if isinstance(png, bytes) else f"<p class='note'>{_e(fam)}: {_e(png)}</p>")
    parts.append("</div></body></html>")
    return "\n".join(parts)


def write_report(
    path: str | Path,
    results: Results,
    descriptions: dict[str, tuple[str, str]],
    summary: dict[str, str],
    notes: list[str],
    baseline_names=(),
) -> None:
    write_text(path, render_report(results, descriptions, summary, notes, baseline_names))


def _table(results: Results, runs: list[str], metrics: list[str], baseline_names) -> str:
    heads = "".join(f"<th class='baseline'>{_e(r)}</th>" if r in baseline_names else f"<th>{_e(r)}</th>" for r in runs)
    rows = ["<table><tr><th>metric</th>" + heads + "</tr>"]
    for m in metrics:
        cells = [results[r].get(m) for r in runs]
        values = [c.value if c is not None and c.value is not None and np.isfinite(c.value) else None for c in cells]
        finite = [v for v in values if v is not None]
        direction = next(c.direction for c in cells if c is not None)
        best = (min(finite) if direction == LOWER else max(finite)) if len(finite) > 1 else None
        arrow = "↓" if direction == LOWER else "↑"
        row = [f"<tr><td>{_e(m)} {arrow}</td>"]
        for c, v in zip(cells, values):
            if c is None:
                row.append("<td class='skip'>–</td>")
            elif v is None:
                row.append(f"<td class='skip' title='{_e(c.skipped or '')}'>skipped: {_e(c.skipped or 'n/a')}</td>")
            else:
                extra = f" p={c.p_value:.3g}" if c.p_value is not None else ""
                cls = " class='best'" if best is not None and v == best else ""
                title = f" title='{_e(c.note)}'" if c.note else ""
                row.append(
                    f"<td{cls}{title}>{_fmt(v)} <span class='ci'>[{_fmt(c.ci_low)}, {_fmt(c.ci_high)}]"
                    f"{extra} n={c.n}</span></td>"
                )
        rows.append("".join(row) + "</tr>")
    return "".join(rows) + "</table>"


def _safe_png(make):
    """PNG bytes, or the reason a figure could not be drawn (a figure never breaks the report)."""
    try:
        return make()
    except Exception as exc:  # noqa: BLE001 - see docstring
        return f"figure failed: {type(exc).__name__}: {exc}"


def _img(png: bytes, alt: str) -> str:
    return f"<img alt='{_e(alt)}' src='data:image/png;base64,{base64.b64encode(png).decode('ascii')}'>"


def _fmt(x) -> str:
    if x is None or not np.isfinite(x):
        return "–"
    return f"{x:.3g}" if abs(x) < 1000 else f"{x:.0f}"


def _e(x) -> str:
    return html.escape(str(x), quote=True)
