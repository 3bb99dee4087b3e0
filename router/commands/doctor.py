"""``mtt-router doctor --config PATH [--json]``: the preflight of a real deployment.

One line per check (:mod:`router.doctor`) with ok/warn/fail, what was found and what to do; a table
by default, a JSON list with ``--json``. Exit 0 when no check fails, 1 otherwise, 2 for an invalid
config (its problems on stderr, one per line, as every command does).
"""

from __future__ import annotations

import argparse
import asyncio
import os
from collections import Counter

from router.commands._common import (
    add_config_arg,
    add_json_arg,
    load_config_or_exit,
    print_json,
    print_table,
)
from router.commands._groups import Subparsers
from router.config import Config
from router.doctor import run_checks
from router.doctor_context import Check, open_doctor
from router.exits import Exit
from router.logs import setup_cli_logging


def register(sub: Subparsers[argparse.ArgumentParser]) -> None:
    """Add the ``doctor`` command."""
    parser = sub.add_parser(
        "doctor",
        help="check a deployment: public URL, tokens, MTT, numbers, rules, storage, admin",
        description="A preflight for a real deployment: one line per check with ok/warn/fail, "
        "what was found and what to do. Exit 0 when nothing fails, 1 otherwise. A token refresh "
        "happens only when the access token is expired or refused, as the daemon would do.",
    )
    add_config_arg(parser)
    add_json_arg(parser)
    parser.set_defaults(handler=_doctor)


def _doctor(args: argparse.Namespace) -> int:
    config = load_config_or_exit(args.config)
    if isinstance(config, int):
        return config
    # The report says what went wrong, once; library log lines would only repeat it on stderr.
    setup_cli_logging("critical")
    checks = asyncio.run(_examine(config, os.path.abspath(args.config)))
    if args.json:
        print_json([check.to_json() for check in checks])
    else:
        print_report(checks)
    return Exit.FAILED if any(check.status == "fail" for check in checks) else Exit.OK


async def _examine(config: Config, config_path: str) -> list[Check]:
    async with open_doctor(config, config_path) as ctx:
        return await run_checks(ctx)


def print_report(checks: list[Check]) -> None:
    """The table (one row per check) and a count by status."""
    print_table(
        ("CHECK", "STATUS", "FOUND", "TO DO"),
        [(c.name, c.status, c.detail, c.fix) for c in checks],
    )
    counts = Counter(c.status for c in checks)
    print(f"{counts['ok']} ok, {counts['warn']} warn, {counts['fail']} fail")
