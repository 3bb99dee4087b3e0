"""``mtt-router`` command line: parses arguments, dispatches, and is the only place that exits."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from router import __version__

# Each module registers its own subcommands (router/commands/<name>.py: register(subparsers)).
COMMAND_MODULES = (
    "router.commands.run",
    "router.commands.demo",
    "router.commands.simulate",
    "router.commands.rules",
    "router.commands.clients",
    "router.commands.auth",
    "router.commands.pbx",
    "router.commands.bench",
)

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser."""
    parser = argparse.ArgumentParser(
        prog="mtt-router",
        description="Route every returning caller to their personal manager on the MTT PBX.",
    )
    parser.add_argument("--version", action="version", version=f"mtt-router {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue  # not built yet
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        code: int = handler(args)
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
