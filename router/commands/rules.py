"""``mtt-router rules check|explain``: validate a rules file, and show how a call would be routed.

``push``, ``pull``, ``history`` and ``rollback`` (the rules in Redis) live in
:mod:`router.commands.rules_redis`; they are added to the same group here, and ``explain``
from :mod:`router.commands.rules_explain`.
:func:`load_rules_or_report` (from :mod:`router.commands._rules_file`) loads a file and prints its
problems.
"""

from __future__ import annotations

import argparse
import sys
from datetime import date

from router.commands._groups import Subparsers, add_group
from router.commands._rules_file import load_rules_or_report, print_json, rules_summary
from router.commands.rules_explain import register_explain
from router.commands.rules_redis import add_store_commands
from router.errors import RulesError
from router.exits import Exit
from router.rules.loader import load_rules_file
from router.rules.model import Rules

__all__ = ["load_rules_or_report", "register"]


def register(sub: Subparsers[argparse.ArgumentParser]) -> None:
    """Add the ``rules`` command group: ``check``, ``explain``, ``push``, ``pull``, ``history``
    and ``rollback``."""
    actions = add_group(
        sub,
        "rules",
        help="check routing rules and explain decisions",
        description="Validate routing rules and show how a call would be routed.",
    )
    register_check(actions)
    register_explain(actions)
    add_store_commands(actions)


def register_check(actions: Subparsers[argparse.ArgumentParser]) -> None:
    """Add ``rules check PATH``."""
    parser = actions.add_parser(
        "check",
        help="validate a rules file",
        description="Validate a rules file: exit 0, or 1 with a `PATH:LINE: message` per problem.",
    )
    parser.add_argument("path", metavar="PATH", help="the rules file (YAML, format version 1 or 2)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.set_defaults(handler=_check)


def _check(args: argparse.Namespace) -> int:
    path: str = args.path
    if args.json:
        try:
            rules = load_rules_file(path)
        except RulesError as exc:
            problems = [{"line": line, "message": message} for line, message in exc.problems]
            print_json({"path": path, "ok": False, "problems": problems})
            return Exit.FAILED
        print_json({"path": path, "ok": True, **rules_summary(rules), "warnings": _warnings(rules)})
        return Exit.OK
    loaded = load_rules_or_report(path)
    if loaded is None:
        return Exit.FAILED
    counts = ", ".join(f"{kind}: {count}" for kind, count in loaded.counts().items())
    print(f"{path}: OK ({counts}; otherwise: {loaded.otherwise}; timezone: {loaded.timezone.key})")
    for warning in _warnings(loaded):
        print(f"{path}: warning: {warning}", file=sys.stderr)
    return Exit.OK


def _warnings(rules: Rules) -> list[str]:
    """What is valid but worth a look: a calendar that does not know next year's decree yet."""
    calendar = rules.calendar
    if calendar is None or not calendar.country:
        return []
    next_year = date.today().year + 1
    if next_year in calendar.decreed_years:
        return []
    return [
        f"calendar {calendar.country}: the installed holidays package has no transferred days "
        f"for {next_year} (its decree may be missing): upgrade it when the decree is out, and "
        "add known days with workdays / a schedule's except meanwhile"
    ]
