"""``mtt-router`` command line: parses arguments, dispatches, and is the only place that exits."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from router import __version__
from router.commands import auth, bench, clients, demo, doctor, pbx, replay, rules, run, simulate
from router.exits import Exit

# Each module registers its own subcommands (register(subparsers)), in the order --help lists.
COMMAND_MODULES = (run, demo, simulate, rules, replay, clients, auth, pbx, doctor, bench)


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser."""
    parser = argparse.ArgumentParser(
        prog="mtt-router",
        description="Route every returning caller to their personal manager on the MTT PBX.",
    )
    parser.add_argument("--version", action="version", version=f"mtt-router {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMAND_MODULES:
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help(sys.stderr)
        return Exit.USAGE
    try:
        code: int = handler(args)
    except KeyboardInterrupt:
        return Exit.INTERRUPTED
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
