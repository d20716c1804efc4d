"""Collects which inputs of a batch were converted or skipped, and why."""
from __future__ import annotations

import logging
import sys
from collections import Counter
from dataclasses import dataclass, field

log = logging.getLogger("preprocess")


@dataclass
class BatchReport:
    """Successes and failures of a batch conversion, printed as one summary at the end."""

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
        lines = [f"converted {len(self.succeeded)} of {total} inputs, {len(self.failed)} failed"]
        for name, reason in self.failed:
            lines.append(f"  failed: {name}: {reason}")
        for what, n in sorted(self.notes.items()):
            lines.append(f"  {what}: {n}")
        return "\n".join(lines)

    def finish(self, out) -> None:
        """Print the summary; a batch in which nothing converted is an error (inside the atomic write, so the
        output is left unchanged)."""
        print(self.summary())
        if not self.succeeded:
            from Engineering.errors import UserError

            raise UserError(f"no input could be converted; {out} left unchanged")


def setup_logging(debug: bool = False) -> None:
    """One-line messages: information on stdout, warnings and errors on stderr.

    Keeping stderr for trouble means a failed run ends with just the ``error:`` line there.
    Only the "preprocess" logger is configured, so calling a tool's ``main`` in-process
    leaves the caller's logging alone.
    """
    out = logging.StreamHandler(sys.stdout)
    out.addFilter(lambda record: record.levelno < logging.WARNING)
    err = logging.StreamHandler(sys.stderr)
    err.setLevel(logging.WARNING)
    for handler in (out, err):
        handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    log.handlers[:] = [out, err]
    log.setLevel(logging.DEBUG if debug else logging.INFO)
    log.propagate = False
    # Third-party chatter (pydicom warnings on odd headers) only with --debug.
    logging.getLogger("pydicom").setLevel(logging.DEBUG if debug else logging.ERROR)
