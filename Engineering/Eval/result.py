"""One benchmark number: value, 95% CI, which direction is better, and context.

This is the record behind metrics.json (run -> metric -> record) and metrics.csv.
A metric that could not be computed is still a record, with ``skipped`` saying why,
so that a report never silently loses a row.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

HIGHER = "higher"  # higher is better
LOWER = "lower"  # lower is better


@dataclass
class MetricResult:
    value: float | None
    ci_low: float | None
    ci_high: float | None
    direction: str
    n: int = 0  # samples the metric was computed on
    chance: float | None = None  # the value expected from an uninformative representation
    p_value: float | None = None
    note: str | None = None
    skipped: str | None = None  # reason, when the metric was not computed
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def skip(cls, direction: str, reason: str, n: int = 0) -> MetricResult:
        return cls(None, None, None, direction, n=n, skipped=reason)

    @classmethod
    def from_ci(cls, ci: tuple[float, float, float], direction: str, n: int, **kw) -> MetricResult:
        value, low, high = ci
        return cls(value, low, high, direction, n=n, **kw)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe: NaN becomes None; empty optional fields are left out."""
        out: dict[str, Any] = {
            "value": _num(self.value),
            "ci_low": _num(self.ci_low),
            "ci_high": _num(self.ci_high),
            "direction": self.direction,
            "n": self.n,
        }
        for name in ("chance", "p_value"):
            if getattr(self, name) is not None:
                out[name] = _num(getattr(self, name))
        for name in ("note", "skipped"):
            if getattr(self, name):
                out[name] = getattr(self, name)
        out.update(self.extra)
        return out


def _num(x: float | None) -> float | None:
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None
