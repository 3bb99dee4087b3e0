"""``mtt-router rules check|explain``: validate a rules file, and show how a call would be routed.

``push`` and ``pull`` (the rules in Redis) live in :mod:`router.commands.rules_redis`; they are
added to the same group here. :func:`load_rules_or_report` loads a file and prints its problems.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, date, datetime
from typing import Any

from router.commands._groups import Subparsers, add_group
from router.commands.rules_redis import add_store_commands
from router.context import CallerContext
from router.errors import RulesError
from router.exits import Exit
from router.numbers import try_normalize
from router.routing import Action, Decision, decide
from router.rules.loader import load_rules_file
from router.rules.model import Rules


def register(sub: Subparsers[argparse.ArgumentParser]) -> None:
    """Add the ``rules`` command group: ``check``, ``explain``, ``push`` and ``pull``."""
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
    parser.add_argument("path", metavar="PATH", help="the rules file (YAML, format version 1)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.set_defaults(handler=_check)


def register_explain(actions: Subparsers[argparse.ArgumentParser]) -> None:
    """Add ``rules explain --rules PATH CALLER ...``."""
    parser = actions.add_parser(
        "explain",
        help="show how a call would be routed, and why",
        description="Print the decision the daemon would take for a parked call, and why.",
    )
    parser.add_argument("caller", metavar="CALLER", help="the caller's number, in any format")
    parser.add_argument("--rules", required=True, metavar="PATH", help="the rules file")
    parser.add_argument("--callee", metavar="NUMBER", help="the external number called (shown)")
    parser.add_argument(
        "--at",
        type=parse_at,
        metavar="ISO-8601",
        help="when the call arrives (default: now; without an offset: rules-local time)",
    )
    parser.add_argument(
        "--busy",
        nargs="+",
        action="extend",
        default=[],
        metavar="WORKPLACE",
        help="workplaces to treat as on a call (put CALLER before this option)",
    )
    parser.add_argument(
        "--workplaces",
        nargs="+",
        action="extend",
        metavar="WORKPLACE",
        help="workplaces MTT lists; others are skipped (default: do not check)",
    )
    parser.add_argument("--json", action="store_true", help="print the decision as JSON")
    parser.set_defaults(handler=_explain)


def parse_at(text: str) -> datetime:
    """``--at`` value: an ISO-8601 date-time (``2027-01-11T10:00+03:00``, ``...Z``, or local)."""
    try:
        return datetime.fromisoformat(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not an ISO-8601 date-time: {text!r} (e.g. 2027-01-11T10:00+03:00)"
        ) from None


def load_rules_or_report(path: str) -> Rules | None:
    """Load ``path``; on problems print them (``PATH:LINE: message``) to stdout and return None."""
    try:
        return load_rules_file(path)
    except RulesError as exc:
        for line in exc.lines():
            print(line)
        count = len(exc.problems)
        print(f"{path}: {count} problem{'s' if count != 1 else ''}", file=sys.stderr)
        return None


def _check(args: argparse.Namespace) -> int:
    path: str = args.path
    if args.json:
        try:
            rules = load_rules_file(path)
        except RulesError as exc:
            problems = [{"line": line, "message": message} for line, message in exc.problems]
            _print_json({"path": path, "ok": False, "problems": problems})
            return Exit.FAILED
        _print_json({"path": path, "ok": True, **_summary(rules), "warnings": _warnings(rules)})
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


def _summary(rules: Rules) -> dict[str, Any]:
    return {
        "version": rules.version,
        "timezone": rules.timezone.key,
        "digest": rules.digest,
        "counts": rules.counts(),
        "otherwise": rules.otherwise.value,
    }


def _explain(args: argparse.Namespace) -> int:
    rules = load_rules_or_report(args.rules)
    if rules is None:
        return Exit.FAILED
    at: datetime = args.at if args.at is not None else datetime.now(UTC)
    at = at.replace(tzinfo=rules.timezone) if at.tzinfo is None else at
    context = CallerContext.of(
        args.caller,
        callee=args.callee,
        now=at,
        busy=frozenset(args.busy),
        known_workplaces=None if args.workplaces is None else frozenset(args.workplaces),
    )
    decision = decide(context, rules)
    local = at.astimezone(rules.timezone)
    if args.json:
        out = decision.to_json()
        out["at"] = local.isoformat()
        out["callee"] = try_normalize(args.callee) or args.callee
        out["rules"] = {"path": args.rules, **_summary(rules)}
        _print_json(out)
        return Exit.OK
    for line in _explain_lines(args, rules, decision, local):
        print(line)
    return Exit.OK


def _explain_lines(
    args: argparse.Namespace, rules: Rules, decision: Decision, local: datetime
) -> list[str]:
    caller = f"{args.caller!r} (unreadable)" if args.caller else "(none)"
    if decision.caller is not None:
        caller = f"{args.caller} -> {decision.caller}"
    lines = [f"caller:   {caller}"]
    if args.callee is not None:
        callee = try_normalize(args.callee) or args.callee
        lines.append(f"callee:   {callee} (format 1 rules route by caller only)")
    lines.append(f"at:       {local:%Y-%m-%d %H:%M %a} ({rules.timezone.key})")
    if decision.action is Action.TRANSFER:
        for i, target in enumerate(decision.targets):
            label = rules.managers[target.manager].label
            head = "decision: transfer to" if i == 0 else "next:                 "
            lines.append(f"{head} {label} at {target.workplace} [{target.via}]")
    elif decision.action is Action.TERMINATE:
        lines.append(
            "decision: terminate (terminateCall: the PBX routes the call its usual way now)"
        )
    else:
        lines.append("decision: wait (no command: the PBX routes the call when parking ends)")
    lines.append("why:")
    lines.extend(f"  - {reason}" for reason in decision.reasons)
    return lines


def _print_json(data: dict[str, Any]) -> None:
    print(json.dumps(data, ensure_ascii=False, indent=2))
