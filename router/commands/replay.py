"""``mtt-router replay FILE --rules PATH [--against PATH2] [--json] [--config PATH]``.

Prints, for every parked call of a capture file (``log.capture``), what the rules would decide as
at the time of the call, then a summary; with ``--against``, the calls a second rules file sends
elsewhere. The logic is :mod:`router.replay`; this module parses, prints and exits.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from router.capture import CaptureError
from router.commands._common import load_config_or_exit, print_json, print_table
from router.commands.rules import load_rules_or_report
from router.config import Config
from router.exits import Exit
from router.logs import setup_cli_logging
from router.progress import Bar
from router.replay import (
    Getter,
    Progress,
    ReplayedCall,
    Replayer,
    ReplayReport,
    destination_of,
    replay,
)
from router.routing import Decision
from router.rules.model import Rules
from router.sources import CLIENTS_SPACE
from router.state.factory import open_stores

PARKED_RULE = (
    "A parked call, for replay: an incoming `trying` without forwarders whose callee is not a "
    "workplace seen in the capture (the PBX side of a showing/connected/hiding leg, or a makeCall "
    "leg); a repeated call id counts as a duplicate."
)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``replay`` command."""
    parser = sub.add_parser(
        "replay",
        help="decide the parked calls of a capture file by the rules (what would this change?)",
        description="Read a capture file (log.capture) and print, for every parked call in it, "
        "what the rules decide as at the time of the call (its received_at; who was on a call "
        "then is rebuilt from the captured notifications), then counts by outcome and manager. "
        f"{PARKED_RULE} Storage-backed sources (the client map) are not consulted without "
        "--config; with it the client map is read as it is now. A CRM lookup is never asked. "
        "Lines that are not capture lines are reported as FILE:LINE: message and skipped. "
        "Exit 1 when the capture or a rules file is invalid as a whole.",
    )
    parser.add_argument("file", metavar="FILE", help="the capture file (JSON lines)")
    parser.add_argument("--rules", required=True, metavar="PATH", help="the rules file")
    parser.add_argument(
        "--against",
        metavar="PATH2",
        help="a second rules file: list only the calls it sends elsewhere, with a count",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    parser.add_argument(
        "--config",
        metavar="PATH",
        help="consult the storage this config names (the client map); default: not consulted",
    )
    parser.set_defaults(handler=_replay)


def _replay(args: argparse.Namespace) -> int:
    rules = load_rules_or_report(args.rules)
    if rules is None:
        return Exit.FAILED
    against = None
    if args.against is not None:
        against = load_rules_or_report(args.against)
        if against is None:
            return Exit.FAILED
    config: Config | None = None
    if args.config is not None:
        loaded = load_config_or_exit(args.config)
        if isinstance(loaded, int):
            return loaded
        config = loaded
        setup_cli_logging(config.log.level)
    try:
        # On a terminal, a bar on stderr while the capture is read (twice), erased at the end.
        with Bar(f"replay {Path(args.file).name}", _bytes_to_read(args.file)) as bar:
            progress = bar.update if bar.drawn else None
            report = asyncio.run(_run(args, rules, against, config, progress))
    except CaptureError as exc:
        print(exc, file=sys.stderr)
        return Exit.FAILED
    for bad in report.skipped:
        print(f"{args.file}:{bad.line}: {bad.message}", file=sys.stderr)
    if args.json:
        print_json(_json(args, rules, report))
    else:
        _print(args, rules, report)
    return Exit.OK


async def _run(
    args: argparse.Namespace,
    rules: Rules,
    against: Rules | None,
    config: Config | None,
    progress: Progress | None,
) -> ReplayReport:
    async with _lookup(config) as (lookup, why):
        replayer = Replayer(rules, against, lookup=lookup, unconsulted=why)
        return await replay(args.file, replayer, progress)


def _bytes_to_read(path: str) -> float | None:
    """What :func:`router.replay.replay` reports progress in: the file's size, read twice."""
    try:
        return 2.0 * max(1, Path(path).stat().st_size)
    except OSError:
        return None  # replay says what is wrong with it


@contextlib.asynccontextmanager
async def _lookup(config: Config | None) -> AsyncIterator[tuple[dict[str, Getter], str]]:
    """The storage spaces replay can read (the client map), and why the others are not read."""
    if config is None:
        yield {}, "replay without --config"
        return
    stores = await open_stores(config)
    try:
        # Reading, never claiming: the client map only, as it is now.
        lookup: dict[str, Getter] = {}
        if stores.clients is not None:
            lookup[CLIENTS_SPACE] = stores.clients.get
        yield lookup, f"the {stores.description} storage keeps no such map"
    finally:
        await stores.aclose()


# -- output -------------------------------------------------------------------------------------


def _where(decision: Decision) -> str:
    target = decision.target
    return "-" if target is None else f"{target.manager} {target.workplace}"


def _print(args: argparse.Namespace, rules: Rules, report: ReplayReport) -> None:
    for call in report.calls:
        outcome, manager, workplace = call.destination
        local = call.at.astimezone(rules.timezone)
        print(f"{local:%Y-%m-%d %H:%M:%S}  call {call.call_id}")
        print(f"  caller {call.caller or '-'}  line {call.callee or '-'}")
        head = outcome if manager is None else f"{outcome}: {manager} at {workplace}"
        print(f"  {head} [{call.decision.matched}]")
        for reason in call.decision.reasons:
            print(f"    - {reason}")
    print()
    print(
        f"{len(report.calls)} parked calls in {args.file} (duplicates: {report.duplicates}, "
        f"notifications: {report.notifications}, refused: {report.refused}, "
        f"lines skipped: {len(report.skipped)}); times in {rules.timezone.key}"
    )
    rows = [(outcome, manager, count) for outcome, manager, count in report.summary()]
    if rows:
        print_table(("outcome", "manager", "calls"), rows)
    if report.changes is not None:
        print()
        print(
            f"against {args.against}: {len(report.changes)} of {len(report.calls)} calls "
            "would go elsewhere"
        )
        if report.changes:
            print_table(
                ("at", "call", "caller", "now", "with " + args.against),
                [
                    (
                        f"{c.call.at.astimezone(rules.timezone):%Y-%m-%d %H:%M:%S}",
                        c.call.call_id,
                        c.call.caller,
                        f"{c.call.destination.outcome} {_where(c.call.decision)}",
                        f"{destination_of(c.after).outcome} {_where(c.after)}",
                    )
                    for c in report.changes
                ],
            )


def _call_json(call: ReplayedCall, decision: Decision | None = None) -> dict[str, Any]:
    decision = call.decision if decision is None else decision
    outcome, manager, workplace = destination_of(decision)
    return {
        "outcome": outcome,
        "manager": manager,
        "workplace": workplace,
        "matched": decision.matched.value,
        "reasons": list(decision.reasons),
    }


def _json(args: argparse.Namespace, rules: Rules, report: ReplayReport) -> dict[str, Any]:
    def head(call: ReplayedCall) -> dict[str, Any]:
        return {
            "call_id": call.call_id,
            "at": call.at.isoformat(),
            "caller": call.caller,
            "line": call.callee,
            "capture_line": call.line,
        }

    out: dict[str, Any] = {
        "file": args.file,
        "rules": {"path": args.rules, "digest": rules.digest},
        "calls": [head(call) | _call_json(call) for call in report.calls],
        "summary": [{"outcome": o, "manager": m, "calls": n} for o, m, n in report.summary()],
        "counts": {
            "parked": len(report.calls),
            "duplicates": report.duplicates,
            "notifications": report.notifications,
            "refused": report.refused,
            "lines": report.lines,
            "skipped": len(report.skipped),
        },
        "skipped": [{"line": bad.line, "message": bad.message} for bad in report.skipped],
    }
    if report.changes is not None:
        out["against"] = {
            "path": args.against,
            "changed": len(report.changes),
            "of": len(report.calls),
            "calls": [
                head(c.call) | {"now": _call_json(c.call), "with": _call_json(c.call, c.after)}
                for c in report.changes
            ],
        }
    return out
