"""Collects which inputs of a batch were converted or skipped, and why."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field

from Engineering.errors import UserError

log = logging.getLogger("preprocess")


@dataclass
class BatchReport:
    """Successes and failures of a batch, printed as one summary when its ``with`` block ends.

    Open it inside the atomic output (``with atomic_h5(out) as h5, BatchReport(...) as report:``): a batch
    in which nothing succeeded raises ``nothing`` there, so the output is left unchanged.
    """

    nothing: str  # the error when no input succeeded
    done: str = "converted"  # the verb of the summary line
    succeeded: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    notes: Counter = field(default_factory=Counter)

    def ok(self, name: str) -> None:
        self.succeeded.append(name)

    def fail(self, name: str, reason: str) -> None:
        """Record a skipped input and say so at once (the batch goes on)."""
        self.failed.append((name, reason))
        log.warning("skipped %s: %s", name, reason)

    def note(self, what: str) -> None:
        """Count a non-fatal event (e.g. 'series without a spec entry ignored')."""
        self.notes[what] += 1

    def summary(self) -> str:
        total = len(self.succeeded) + len(self.failed)
        lines = [f"{self.done} {len(self.succeeded)} of {total} inputs, {len(self.failed)} failed"]
        for name, reason in self.failed:
            lines.append(f"  failed: {name}: {reason}")
        for what, n in sorted(self.notes.items()):
            lines.append(f"  {what}: {n}")
        return "\n".join(lines)

    def __enter__(self) -> BatchReport:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:  # the batch itself failed: its error, not a summary
            return
        print(self.summary())
        if not self.succeeded:
            raise UserError(self.nothing)
