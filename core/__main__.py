"""Command line: python -m core {train,demo,sweep,import,diagnose,report,export,repair} (see --help).

A refusal prints one ``error:`` line and exits with status 2; ``--debug`` (anywhere on the
command line) or ``ADE_DEBUG=1`` prints the traceback as well.
"""
from __future__ import annotations

import argparse
import os
import sys
import traceback

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

#: Exit status of a refused command (argparse uses the same for bad arguments).
REFUSED = 2
#: Exit status of an error that is not the input's fault (a bug to report).
INTERNAL = 1


def _refusal_types() -> tuple[type[BaseException], ...]:
    """Errors that describe bad input (a damaged run, a refused model or image, a bad option value)."""
    from core.errors import UserError
    from core.run.runs import RunError

    return (UserError, RunError, ValueError, OSError, KeyError)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("ADE_DEBUG") == "1"
    argv = [a for a in argv if a != "--debug"]
    from core import cli

    parser = argparse.ArgumentParser(prog="python -m core", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for register in cli.COMMANDS:
        register(sub)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - one line for the user; the traceback only with --debug
        return report_error(e, debug)


def report_error(e: BaseException, debug: bool) -> int:
    """Print ``e`` as one ``error:`` line (traceback first with ``debug``); the exit status."""
    if debug:
        traceback.print_exception(e)
    refused = isinstance(e, _refusal_types())
    text = " ".join(str(e).split()) or type(e).__name__
    if not refused or type(e).__name__ not in ("UserError", "RunError"):
        text = f"{text} ({type(e).__name__})"
    hint = "" if debug else "; --debug shows the traceback"
    if refused:
        print(f"error: {text}", file=sys.stderr)
        return REFUSED
    print(f"error: internal error: {text}{hint}; please report it", file=sys.stderr)
    return INTERNAL


if __name__ == "__main__":
    sys.exit(main())
