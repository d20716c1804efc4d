"""User-facing errors: one clear line and exit code 2 from every executor.

Anything the user can fix (bad file, bad key, bad value, bad shape) raises
``UserError``; executors wrap their ``main`` with :func:`run_cli`, which prints
``error: <message>`` and exits 2, or re-raises with ``--debug``.
"""
from __future__ import annotations

import argparse
import errno
import sys
from typing import Callable, Sequence


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
    try:
        main(argv)
    except tuple(USER_FACING) as exc:
        if debug:
            raise
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except PermissionError as exc:
        if debug:
            raise
        print(f"error: permission denied: {exc.filename or exc} (a read-only folder or file?)", file=sys.stderr)
        return 2
    except OSError as exc:
        if exc.errno == errno.EROFS and not debug:  # a read-only mount raises this, not PermissionError
            from pathlib import Path

            folder = str(Path(exc.filename).parent) if exc.filename else "the output folder"
            print(f"error: read-only file system: cannot write in {folder}; choose an output folder on a writable "
                  "file system", file=sys.stderr)
            return 2
        if exc.errno != errno.ENOSPC or debug:
            raise
        where = f" writing {exc.filename}" if exc.filename else ""
        print(f"error: no space left on the device{where}; earlier outputs and checkpoints are intact (every "
              "write goes to a temporary file first); free some space and run again", file=sys.stderr)
        return 2
    return 0
