"""User-facing errors: one clear line and exit code 2 from every executor.

Anything the user can fix (bad file, bad key, bad value, bad shape) raises
``UserError``; executors wrap their ``main`` with :func:`run_cli`, which prints
``error: <message>`` and exits 2, or re-raises with ``--debug``.
"""

from __future__ import annotations

import argparse
import errno
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager


class UserError(Exception):
    """An error caused by input the user controls (data, config, flags, weights)."""


# Error types of the layers below the CLI that know nothing of it (a WarpDrive raises its own ValueError
# subclass); the layer that owns them registers them here, and run_cli prints them as one line like UserError.
USER_FACING: list[type[BaseException]] = [UserError]


def user_facing(*types: type[BaseException]) -> None:
    USER_FACING.extend(t for t in types if t not in USER_FACING)


class ArgParser(argparse.ArgumentParser):
    """The one argparse parser of every command-line tool: a bad flag is one line and exit 2 (via run_cli)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message):
        raise UserError(message)


class Terminated(BaseException):
    """The process was asked to stop (SIGTERM from ``timeout``/``scancel``/``docker stop``/a SLURM time limit,
    SIGHUP, SIGINT). A BaseException, like KeyboardInterrupt: nothing catches it by accident, and every atomic
    writer removes its temporary file on the way out."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


# The signal policy of every executor (run_cli): SIGTERM, SIGHUP and SIGINT end the run with exit code
# 128 + signal number (143, 129, 130) and one line saying what was saved and how to continue; never exit 0.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)
_received: list[int] = []  # signals received during this run_cli call
_deferred = [0]  # > 0 while a Lightning loop runs: it stops by itself at the next batch boundary
_resume_hint: list[str] = []  # what the code that saved the state says about continuing


def _on_stop_signal(signum, frame) -> None:
    _received.append(signum)
    if signum == signal.SIGINT:
        raise KeyboardInterrupt  # Ctrl+C stops at once, as Python's own handler does (Lightning catches it too)
    if signum != signal.SIGTERM or not _deferred[0]:  # Lightning's loops stop gracefully on SIGTERM only
        raise Terminated(signum)


@contextmanager
def graceful_stop() -> Iterator[None]:
    """Run a Lightning fit/test inside: a stop signal is recorded, Lightning ends the loop after the current batch
    (its own SIGTERM handling, composed with ours) and callbacks save their state; on the way out the run stops."""
    before = len(_received)  # only a signal received inside this block stops it
    _deferred[0] += 1
    try:
        yield
    finally:
        _deferred[0] -= 1
    if len(_received) > before and not _deferred[0]:
        raise Terminated(_received[-1])


def note_resume(hint: str) -> None:
    """Told by the code that saved the state on a stop signal: the line run_cli prints says it."""
    _resume_hint.append(hint)


def one_line(exc: BaseException) -> str:
    """The user-facing line of an error; a DataLoader worker wraps ours in its traceback text."""
    text = str(exc)
    if "Original Traceback" in text:
        last = [ln for ln in text.strip().splitlines() if ln.strip()][-1]
        text = last.split("UserError: ", 1)[-1]
    return " ".join(text.split("\n")).strip()


def run_cli(main: Callable[[Sequence[str]], object], argv: Sequence[str] | None = None) -> int:
    """Run ``main(argv)``; turn a UserError into one line on stderr and exit code 2."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    _received.clear()
    _resume_hint.clear()
    # signal handlers can only be set from the main thread (a run_cli called from another thread keeps Python's)
    main_thread = threading.current_thread() is threading.main_thread()
    previous = {s: signal.getsignal(s) for s in STOP_SIGNALS} if main_thread else {}
    for s in previous:
        signal.signal(s, _on_stop_signal)
    try:
        main(argv)
    except (Terminated, KeyboardInterrupt, SystemExit) as exc:
        # Lightning ends a stopped loop with SIGTERMException, a SystemExit without a code (exit status 0), and
        # a Ctrl+C during fit with sys.exit(1): a received signal decides the exit status, never those
        signum = (
            exc.signum
            if isinstance(exc, Terminated)
            else _received[-1]
            if _received
            else signal.SIGINT
            if isinstance(exc, KeyboardInterrupt)
            else None
        )
        if signum is None:
            raise
        if debug:
            import traceback

            traceback.print_exc()
        name = signal.Signals(signum).name
        hint = _resume_hint[-1] if _resume_hint else "outputs are written atomically: what was complete is kept"
        print(f"error: terminated by {name}; {hint}", file=sys.stderr)
        return 128 + int(signum)
    except tuple(USER_FACING) as exc:
        if debug:
            raise
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return 2
    except PermissionError as exc:
        if debug:
            raise
        print(f"error: permission denied: {exc.filename or exc} (a read-only folder or file?)", file=sys.stderr)
        return 2
    except OSError as exc:
        if exc.errno == errno.EROFS and not debug:  # a read-only mount raises this, not PermissionError
            from pathlib import Path

            folder = str(Path(exc.filename).parent) if exc.filename else "the output folder"
            print(
                f"error: read-only file system: cannot write in {folder}; choose an output folder on a writable "
                "file system",
                file=sys.stderr,
            )
            return 2
        if exc.errno != errno.ENOSPC or debug:
            raise
        where = f" writing {exc.filename}" if exc.filename else ""
        print(
            f"error: no space left on the device{where}; earlier outputs and checkpoints are intact (every "
            "write goes to a temporary file first); free some space and run again",
            file=sys.stderr,
        )
        return 2
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        received = list(_received)
        _received.clear()  # nothing of this call reaches the next one
    if received:  # the signal came after the last loop ended its work: still not a clean finish
        print(
            f"error: terminated by {signal.Signals(received[-1]).name} after the work had finished; outputs "
            "are complete",
            file=sys.stderr,
        )
        return 128 + received[-1]
    return 0
