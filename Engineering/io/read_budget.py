"""One bound on what a single read may allocate, checked from the declared shape and dtype before the read.

An HDF5 dataset declares its shape and dtype in its header, and a chunked one can declare terabytes while its
file holds a few bytes. Every reader (training samples, emb.h5, the pixel baseline, point clouds, the
preprocess tools and their size flags) asks :func:`check_read` first, so a dataset too large for this machine
is one line naming it instead of a traceback or the machine swapping itself to death.

The bound is a fraction of the memory available when asked (``DEFAULT_FRACTION``), or ``IMLATENT_MAX_READ_GB``
GiB when that environment variable is set (a shared node whose free memory is not yours, or a big machine).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable

import numpy as np

from Engineering.errors import UserError

ENV = "IMLATENT_MAX_READ_GB"
DEFAULT_FRACTION = 0.5  # the other half: the model, the loaders' prefetch, the copies a transform makes


def _available_bytes() -> int:
    try:
        import psutil  # counts reclaimable page cache as available, as the kernel does

        return int(psutil.virtual_memory().available)
    except ImportError:
        pass
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES"))
    except (ValueError, OSError, AttributeError):  # not POSIX: assume a laptop
        return 16 * 2**30


def read_budget() -> int:
    """Bytes one read may allocate: ``$IMLATENT_MAX_READ_GB`` GiB, else half of the available memory."""
    raw = os.environ.get(ENV, "").strip()
    if raw:
        try:
            gib = float(raw)
        except ValueError:
            gib = math.nan
        if not (math.isfinite(gib) and gib > 0):
            raise UserError(f"{ENV}={raw!r} is not a positive number of GiB")
        return int(gib * 2**30)
    return int(_available_bytes() * DEFAULT_FRACTION)


def nbytes(shape: Iterable[int], dtype) -> int:
    """Bytes of an array of ``shape`` and ``dtype`` (Python ints: a declared shape can overflow int64)."""
    n = 1
    for s in shape:
        n *= int(s)
    return n * np.dtype(dtype).itemsize


def _gib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB" if n < 2**30 else f"{n / 2**30:,.1f} GiB"


def check_bytes(need: int, what: str, hint: str = "") -> None:
    """A UserError naming ``what`` when ``need`` bytes exceed the read budget; nothing is allocated here."""
    budget = read_budget()
    if need > budget:
        limit = (
            f"{ENV}={os.environ[ENV]}"
            if os.environ.get(ENV, "").strip()
            else f"{DEFAULT_FRACTION:g} of the available memory; {ENV} sets another limit"
        )
        raise UserError(
            f"{what} would need {_gib(need)}, more than the {_gib(budget)} one read may take "
            f"({limit}){'; ' + hint if hint else ''}"
        )


def check_read(shape: Iterable[int], dtype, what: str, hint: str = "", copies: float = 1) -> int:
    """Check that reading an array of the declared ``shape``/``dtype`` (times ``copies``: the conversions the
    reader makes) fits the budget before reading it; returns the bytes of one copy."""
    shape = tuple(int(s) for s in shape)
    one = nbytes(shape, dtype)
    check_bytes(int(one * copies), f"{what} (shape {shape}, {np.dtype(dtype)})", hint)
    return one
