"""The command-line skeleton every preprocess/ tool shares: parser, common flags, logging, INPUT paths.

A tool builds its parser with :func:`tool_parser`, decorates its body with :func:`tool_main` and ends
with ``raise SystemExit(run_cli(main))``; a batch that writes HDF5 reports through
``preprocess.batch_report.BatchReport``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from Engineering.errors import ArgParser, UserError
from preprocess.h5_writer import COMPRESSIONS

log = logging.getLogger("preprocess")


def tool_parser(
    prog: str,
    doc: str,
    *,
    epilog: str | None = None,
    out: str | None = None,
    out_required: bool = True,
    out_default: str | None = None,
    compression: bool = False,
    debug: str = "show tracebacks",
) -> ArgParser:
    """The tool's parser: the first paragraph of ``doc`` as description, the rest (or ``epilog``) kept as
    written below the flags, and the flags every tool spells the same way: ``--out`` (when ``out``, its help,
    is given), ``--compression`` (tools that write images), ``--debug``."""
    summary, _, details = doc.partition("\n\n")
    p = ArgParser(
        prog=prog,
        description=summary,
        epilog=epilog if epilog is not None else details or None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    if out is not None:
        p.add_argument("--out", required=out_required, default=out_default, help=out)
    if compression:
        p.add_argument(
            "--compression", choices=COMPRESSIONS, default="gzip", help="HDF5 compression filter (default: gzip)"
        )
    p.add_argument("--debug", action="store_true", help=debug)
    return p


Run = Callable[[argparse.Namespace], None]
Main = Callable[[Sequence[str]], None]


def tool_main(build_parser: Callable[[], ArgParser]) -> Callable[[Run], Main]:
    """``@tool_main(build_parser)`` over ``def main(args)`` makes it the tool's ``main(argv)``: parse, set up
    logging, run.

    ``main`` raises (UserError for anything the user can fix); ``run_cli`` around it, in ``__main__`` or a
    test, turns that into one line and exit code 2.
    """

    def wrap(run: Run) -> Main:
        def main(argv: Sequence[str]) -> None:
            args = build_parser().parse_args(argv)
            setup_logging(args.debug)
            run(args)

        return main

    return wrap


def input_path(raw: str) -> Path:
    """An INPUT argument as a path; a missing one is a UserError naming it as given."""
    path = Path(raw)
    if not path.exists():
        raise UserError(f"input not found: {raw}")
    return path


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
