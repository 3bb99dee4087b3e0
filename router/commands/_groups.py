"""Argparse plumbing every command module shares (kept free of heavy imports: `rules check`
must start fast)."""

from __future__ import annotations

import argparse
import sys
from functools import partial

from router.exits import Exit

Subparsers = argparse._SubParsersAction  # argparse exposes no public name for it


def _usage(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    parser.print_help(sys.stderr)
    return Exit.USAGE


def add_group(
    sub: Subparsers[argparse.ArgumentParser], name: str, *, help: str, description: str
) -> Subparsers[argparse.ArgumentParser]:
    """A command group (``mtt-router NAME ACTION``); bare ``NAME`` prints its help, exit 2."""
    parser = sub.add_parser(name, help=help, description=description)
    parser.set_defaults(handler=partial(_usage, parser))
    return parser.add_subparsers(dest=f"{name}_action", metavar="ACTION")
