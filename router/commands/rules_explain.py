"""``mtt-router rules explain``: how a call would be routed, every step and why.

Without ``--config`` (it has no default here) only the rules file is consulted: its ``clients``
(with ``clients_file``) and ``prefixes``; the storage's client map, ``learned`` and the CRM
``lookup`` each say "not consulted (no --config)". With ``--config`` the storage the daemon uses is
opened and read exactly as the daemon reads it for a parked call, and the CRM is asked once.
The layout is :mod:`router.explain`'s.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from router.commands._groups import Subparsers
from router.commands._rules_file import load_rules_or_report, print_json, rules_summary
from router.context import CallerContext, Read
from router.exits import Exit
from router.explain import NOT_AVAILABLE, explain, to_json, to_lines
from router.rules.model import Rules
from router.sources import CLIENTS_SPACE, DEFAULT_SOURCES, CandidateSource

if TYPE_CHECKING:
    from router.config import Config

NO_CONFIG = "no --config"
PRESENCE_UNKNOWN = (
    "unknown to explain (the daemon tracks who is on a call); --busy WORKPLACE treats one as busy"
)
STORED_SOURCES = ("learned", "lookup")
"""Sources of ``order`` that need the storage or the CRM, so ``--config``."""


def register_explain(actions: Subparsers[argparse.ArgumentParser]) -> None:
    """Add ``rules explain --rules PATH CALLER ...``."""
    parser = actions.add_parser(
        "explain",
        help="show how a call would be routed, and why",
        description=(
            "Print the decision the daemon would take for a parked call, and every step behind "
            "it. Without --config only the rules file is consulted."
        ),
    )
    parser.add_argument("caller", metavar="CALLER", help="the caller's number, in any format")
    parser.add_argument("--rules", required=True, metavar="PATH", help="the rules file")
    parser.add_argument(
        "--callee", metavar="NUMBER", help="the external number called (the line: its fallback)"
    )
    parser.add_argument(
        "--at",
        type=parse_at,
        metavar="ISO-8601",
        help="when the call arrives (default: now; without an offset: rules-local time)",
    )
    parser.add_argument(
        "--config",
        metavar="PATH",
        help="also consult what the daemon would: the storage (client map, learned) and the CRM "
        "lookup (no default: without it only the rules file is consulted)",
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
    presence = PRESENCE_UNKNOWN
    if args.busy:
        presence = f"as given with --busy: {', '.join(args.busy)}; others unknown to explain"
    notes: dict[str, tuple[str, ...]] = {}
    if args.config is None:
        sources, skipped = _file_sources(rules)
        notes["clients"] = ("client store (clients set, admin API): not consulted (no --config)",)
    else:
        consulted = _consult_with_config(args.config, rules, context)
        if isinstance(consulted, int):
            return consulted
        context, sources, skipped, store_note = consulted
        notes["clients"] = (store_note,)
        notes.update(_unanswered(context, sources))
    origin = _clients_file_note(rules, context)
    if origin is not None:
        notes["clients"] = (origin, *notes["clients"])
    result = explain(context, rules, sources, skipped=skipped, notes=notes, presence=presence)
    if args.json:
        out = to_json(result)
        out["config"] = args.config
        out["rules"] = {"path": args.rules, **rules_summary(rules)}
        print_json(out)
        return Exit.OK
    for line in to_lines(result, args.caller):
        print(line)
    return Exit.OK


def _off(rules: Rules) -> dict[str, str]:
    """Sources of ``order`` whose key the rules do not have."""
    off: dict[str, str] = {}
    if rules.lookup is None:
        off["lookup"] = "no lookup key in the rules"
    if rules.learn is None:
        off["learned"] = "no learn key in the rules"
    return off


def _file_sources(rules: Rules) -> tuple[Mapping[str, CandidateSource], dict[str, str]]:
    """The sources the rules file alone answers, and why the others are not consulted."""
    skipped = dict.fromkeys(STORED_SOURCES, NO_CONFIG) | _off(rules)
    sources = {name: s for name, s in DEFAULT_SOURCES.items() if name not in STORED_SOURCES}
    return sources, skipped


def _clients_file_note(rules: Rules, context: CallerContext) -> str | None:
    """Where the rules' entry for the caller comes from, when the rules have a ``clients_file``."""
    number = context.caller
    if rules.clients_file is None or number is None or number not in rules.clients:
        return None
    if context.stored.get(Read(CLIENTS_SPACE, number)) in rules.managers:
        return None  # the client store's entry decides, not the rules'
    from router.numbers import try_normalize
    from router.state.clients_csv import read_csv_rows

    try:
        with Path(rules.clients_file).open(encoding="utf-8-sig", newline="") as handle:
            found = any(
                cells and try_normalize(cells[0]) == number for _, cells in read_csv_rows(handle)
            )
    except (OSError, UnicodeDecodeError):
        return f"clients_file {rules.clients_file}: cannot be read now"
    if found:
        return f"from clients_file {rules.clients_file}"
    return "from clients in the rules file"


Consulted = tuple[CallerContext, Mapping[str, CandidateSource], dict[str, str], str]


def _consult_with_config(path: str, rules: Rules, context: CallerContext) -> Consulted | int:
    """The context with what the storage and the CRM answer, as the daemon would gather it."""
    from router.commands._common import load_config_or_exit
    from router.logs import setup_cli_logging

    config = load_config_or_exit(path)
    if isinstance(config, int):
        return config
    setup_cli_logging("error")
    return asyncio.run(_gather(config, rules, context))


async def _gather(config: Config, rules: Rules, context: CallerContext) -> Consulted:
    from router.lookup import LOOKUP, LookupSource, lookup_once, make_lookup_session
    from router.metrics import Metrics
    from router.sources import in_order, next_fetch, reads_for
    from router.state.factory import open_stores

    skipped = _off(rules)
    async with make_lookup_session(1) as session:
        sources: dict[str, CandidateSource] = {**DEFAULT_SOURCES, LOOKUP: LookupSource(session)}
        for name in STORED_SOURCES:
            if name not in sources and name not in skipped:
                skipped[name] = NOT_AVAILABLE
        chain = in_order(rules, {n: s for n, s in sources.items() if n not in skipped})
        stores = await open_stores(config, Metrics())
        try:
            # The daemon's own read: the claim and the declared reads in one step. The call id is
            # made up and held a millisecond: no parked call can be claimed by it.
            reads = reads_for(context.caller, chain)
            call_id = f"rules-explain-{secrets.token_hex(8)}"
            gathered = await stores.calls.claim_and_read(call_id, 0.001, reads)
            context = context._replace(stored=gathered.values)
            kept = stores.clients is not None
            note = _store_note(context, stores.description, kept)
        finally:
            await stores.aclose()
        # The CRM, once, when the sources before it in order named nobody (as the daemon does).
        while (source := next_fetch(context, rules, chain)) is not None:
            if source.name == LOOKUP:
                verdict = await lookup_once(context, rules, session)
            else:
                verdict = await source.fetch(context, rules)
            context = context.with_fetched(source.name, verdict)
    return context, sources, skipped, note


def _unanswered(
    context: CallerContext, sources: Mapping[str, CandidateSource]
) -> dict[str, tuple[str, ...]]:
    """Sources (but ``clients``, which says it itself) whose storage reads went unanswered."""
    if context.caller is None:
        return {}
    return {
        name: ("the storage did not answer: decided without it",)
        for name, source in sources.items()
        if name != "clients" and any(r not in context.stored for r in source.reads(context.caller))
    }


def _store_note(context: CallerContext, storage: str, kept: bool) -> str:
    """What the storage's client map said of the caller."""
    if context.caller is None:
        return "client store: not asked"
    read = Read(CLIENTS_SPACE, context.caller)
    if read not in context.stored:
        return f"client store ({storage}): no answer (storage unreachable)"
    value = context.stored[read]
    if value is not None:
        return f"client store ({storage}): {value}"
    if not kept:
        return f"client store ({storage}): none (this storage keeps no client map)"
    return f"client store ({storage}): no entry for this caller"
