"""Bounded numbers for the plain-argparse tools (preprocess/, main_benchmark).

The executors' flags carry their bounds in the flag tables (``Flag.bounds``, checked by the config schema);
a tool with its own ``ArgParser`` gives ``type=bounded(int, ge=1)`` instead, so ``--blas_threads -5`` is the
parser's one line naming the flag rather than a traceback (or a silent nonsense run) later.
``tests/test_hostile_round2.py`` checks that every int/float option of every tool is bounded.
"""

from __future__ import annotations

import argparse
import math
import operator
from collections.abc import Callable

_OPS = {"ge": (operator.ge, ">="), "gt": (operator.gt, ">"), "le": (operator.le, "<="), "lt": (operator.lt, "<")}


def bounded(kind: type = int, **bounds: float) -> Callable[[str], float]:
    """An argparse ``type``: ``kind(text)`` (int or float, finite) within ``bounds`` (ge/gt/le/lt)."""
    unknown = set(bounds) - set(_OPS)
    if unknown or kind not in (int, float):
        raise TypeError(f"bounded({kind.__name__}, {bounds}): kind is int or float, bounds are ge/gt/le/lt")

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
        for name, limit in bounds.items():
            op, sign = _OPS[name]
            if not op(value, limit):
                raise argparse.ArgumentTypeError(f"must be {sign} {limit:g}, got {text}")
        return value

    # read by the test that every numeric option is bounded (a function attribute, which mypy does not model)
    parse.bounds = dict(bounds)  # type: ignore[attr-defined]
    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse
