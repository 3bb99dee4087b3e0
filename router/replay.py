"""``mtt-router replay``: what the rules would decide for every parked call of a capture file.

The capture (:mod:`router.capture`) holds every POST to ``P/events`` as received. Replay reads it
twice, streaming: the first pass learns which identifiers are workplaces (the PBX side of a leg
that rang, was answered or hid: ``showing``/``connected``/``hiding`` of an incoming leg, any leg
of a makeCall); the second walks the notifications the daemon accepted (status 200) in order,
rebuilding presence (who was on a call) with :mod:`router.callmodel`, and decides each parked
call with :func:`router.routing.decide` *as at the time of the call* (``now`` = its
``received_at``).

A parked call, for replay: an incoming ``trying`` without forwarders whose callee is not a
workplace seen in the capture (the capture does not say which numbers are the account's external
numbers; a leg towards a workplace is the PBX delivering a call). Its repeats (the same call id)
are counted as duplicates, as the daemon does.

Storage-backed sources read through ``lookup`` (space -> getter, e.g. the storage's client map as
it is now: it keeps no history); a read whose space has no getter is *not consulted* and its
source says so in the reason chain. Sources with their own I/O (a CRM lookup) are never asked.
Pure logic: no printing (:mod:`router.commands.replay` prints).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import NamedTuple

import orjson

from router import callmodel
from router.capture import BadLine, CaptureError, Record, read_capture
from router.context import CallerContext, MatchKind, Read, Verdict
from router.dispatch import Outcome
from router.errors import EventShapeError
from router.events import CallEvent, CallState, CallType, parse_event
from router.numbers import try_normalize
from router.presence_queue import BUSY_TTL_S
from router.routing import Action, Decision, decide
from router.rules.model import Rules
from router.sources import (
    DEFAULT_SOURCES,
    LEARNED_SPACE,
    CandidateSource,
    FetchingSource,
    in_order,
    reads_for,
)

Getter = Callable[[str], Awaitable[str | None]]
"""Reads one key of a storage space (the client map's ``ClientStore.get``)."""
Progress = Callable[[int, int], None]
"""``(bytes read, bytes to read)`` over both passes."""

_AT_WORKPLACE = frozenset({CallState.SHOWING, CallState.CONNECTED, CallState.HIDING})
_OUTCOMES = {
    Action.TRANSFER: Outcome.TRANSFERRED,
    Action.TERMINATE: Outcome.FALLBACK_PBX,
    Action.WAIT: Outcome.WAITED,
}


class Destination(NamedTuple):
    """Where a decision sends a call: what ``--against`` compares."""

    outcome: str
    manager: str | None
    workplace: str | None


class ReplayedCall(NamedTuple):
    """One parked call of the capture and what the rules decide for it."""

    line: int
    call_id: str
    at: datetime
    caller: str | None
    callee: str | None
    decision: Decision

    @property
    def destination(self) -> Destination:
        """Outcome (as the daemon names it), manager and workplace."""
        return destination_of(self.decision)


class Change(NamedTuple):
    """A call that the second rules file sends elsewhere."""

    call: ReplayedCall
    after: Decision


def destination_of(decision: Decision) -> Destination:
    """The daemon's outcome for ``decision`` had MTT accepted its first command."""
    target = decision.target
    return Destination(
        _OUTCOMES[decision.action].value,
        None if target is None else target.manager,
        None if target is None else target.workplace,
    )


@dataclass
class ReplayReport:
    """Every parked call decided, the lines skipped, and what else the capture held."""

    calls: list[ReplayedCall] = field(default_factory=list)
    changes: list[Change] | None = None
    """With a second rules file: the calls it sends elsewhere (``None``: no second file)."""
    skipped: list[BadLine] = field(default_factory=list)
    lines: int = 0
    notifications: int = 0
    """Lines answered 200 (the notifications the daemon acted on)."""
    refused: int = 0
    """Lines answered otherwise (400, 413...): not replayed."""
    duplicates: int = 0
    workplaces: frozenset[str] = frozenset()

    def summary(self) -> list[tuple[str, str | None, int]]:
        """``(outcome, manager, calls)``, most calls first."""
        counts: dict[tuple[str, str | None], int] = {}
        for call in self.calls:
            key = call.destination[:2]
            counts[key] = counts.get(key, 0) + 1
        return sorted(
            ((o, m, n) for (o, m), n in counts.items()), key=lambda r: (-r[2], r[0], r[1] or "")
        )


def _event(record: Record) -> CallEvent | BadLine | None:
    """The call notification of an accepted line (``None``: another kind of notification)."""
    if record.body is None:
        return BadLine(record.line, "status 200 but no body")
    try:
        event = parse_event(orjson.loads(record.body))
    except orjson.JSONDecodeError as exc:
        return BadLine(record.line, f"status 200 but the body is not JSON ({exc})")
    except EventShapeError as exc:
        return BadLine(record.line, f"status 200 but not a notification ({exc})")
    return event if isinstance(event, CallEvent) else None


# -- the rules' view of one call ----------------------------------------------------------------


def workplace_key(event: CallEvent) -> str | None:
    """The PBX-side account a leg goes to, as the engine compares it with workplaces."""
    return event.callee.account_id or event.callee.id


def seen_workplace(event: CallEvent) -> str | None:
    """The workplace this notification shows a leg at, if any (the first pass)."""
    if event.type is CallType.OUTGOING or event.state in _AT_WORKPLACE:
        return callmodel.workplace_of(event)
    return None


def is_parked(event: CallEvent, workplaces: frozenset[str]) -> bool:
    """Replay's rule: an incoming ``trying``, no forwarders, not towards a workplace."""
    return (
        event.state is CallState.TRYING
        and event.type is CallType.INCOMING
        and not event.forwarded
        and workplace_key(event) not in workplaces
    )


class _Presence:
    """Workplace -> calls it is on (each with the engine's safety-net expiry), in capture time."""

    def __init__(self) -> None:
        self._calls: dict[str, dict[str, float]] = {}

    def apply(self, event: CallEvent, at_s: float) -> None:
        busy = callmodel.busy_workplace(event)
        if busy is not None:
            self._calls.setdefault(busy, {})[event.call.id] = at_s + BUSY_TTL_S
            return
        free = callmodel.freed_workplace(event)
        if free is None:
            return
        calls = self._calls.get(free)
        if calls is not None and calls.pop(event.call.id, None) is not None and not calls:
            del self._calls[free]

    def busy(self, at_s: float) -> frozenset[str]:
        return frozenset(wp for wp, calls in self._calls.items() if max(calls.values()) > at_s)


class _Noted:
    """A source whose declared storage reads were not answered: says so, then resolves."""

    def __init__(self, inner: CandidateSource, why: str) -> None:
        self._inner = inner
        self._why = why
        self.kind: MatchKind = inner.kind

    def reads(self, caller: str) -> tuple[Read, ...]:
        return self._inner.reads(caller)

    def resolve(self, context: CallerContext, rules: Rules) -> Verdict:
        verdict = self._inner.resolve(context, rules)
        assert context.caller is not None  # decide() consults no source for an unreadable caller
        missing = sorted(
            {
                r.space
                for r in self.reads(context.caller)
                if r not in context.stored and (r.space != LEARNED_SPACE or rules.learn is not None)
            }
        )
        if not missing:
            return verdict
        note = f"storage map {', '.join(missing)}: not consulted ({self._why})"
        return Verdict(verdict.manager, (note, *verdict.reasons))


def replay_chain(
    rules: Rules, why: str, sources: Mapping[str, CandidateSource] = DEFAULT_SOURCES
) -> tuple[CandidateSource, ...]:
    """The rules' sources, each noting the storage reads replay could not answer."""
    return tuple(
        source if isinstance(source, FetchingSource) else _Noted(source, why)
        for source in in_order(rules, sources)
    )


class Replayer:
    """Decides parked calls by one or two rules files; reads the storage once per key."""

    def __init__(
        self,
        rules: Rules,
        against: Rules | None = None,
        *,
        lookup: Mapping[str, Getter] | None = None,
        unconsulted: str = "replay without --config",
    ) -> None:
        self._rules = rules
        self._against = against
        self._lookup = dict(lookup or {})
        self._chains = [replay_chain(r, unconsulted) for r in (rules, against) if r is not None]
        self._cache: dict[Read, str | None] = {}

    @property
    def compares(self) -> bool:
        """True with a second rules file (``--against``)."""
        return self._against is not None

    async def _stored(self, caller: str | None) -> dict[Read, str | None]:
        stored: dict[Read, str | None] = {}
        for chain in self._chains:
            for read in reads_for(caller, chain):
                getter = self._lookup.get(read.space)
                if getter is None:
                    continue  # not in ``stored``: the source says "not consulted"
                if read not in self._cache:
                    self._cache[read] = await getter(read.key)
                stored[read] = self._cache[read]
        return stored

    async def decide(
        self, event: CallEvent, at: datetime, busy: frozenset[str]
    ) -> tuple[Decision, Decision | None]:
        """The decision by the rules (and by the second rules file) for one parked call."""
        caller = try_normalize(event.caller.number)
        context = CallerContext(
            caller_raw=event.caller.number,
            caller=caller,
            callee=try_normalize(event.callee.number),
            now=at,
            busy=busy,
            known_workplaces=None,  # MTT's list is not in the capture: nobody is skipped for it
            stored=await self._stored(caller),
        )
        decisions = [decide(_unfetched(context, c), r, c) for r, c in self._pairs()]
        return decisions[0], decisions[1] if len(decisions) > 1 else None

    def _pairs(self) -> list[tuple[Rules, Sequence[CandidateSource]]]:
        rules = [r for r in (self._rules, self._against) if r is not None]
        return list(zip(rules, self._chains, strict=True))


def _unfetched(context: CallerContext, chain: Sequence[CandidateSource]) -> CallerContext:
    for source in chain:
        if isinstance(source, FetchingSource) and source.name not in context.fetched:
            why = f"{source.name}: not consulted (replay asks no outside service)"
            context = context.with_fetched(source.name, Verdict(None, (why,)))
    return context


# -- the whole file -----------------------------------------------------------------------------


async def replay(
    path: str | Path, replayer: Replayer, progress: Progress | None = None
) -> ReplayReport:
    """Replay the capture at ``path``; :class:`CaptureError` when it is unreadable as a whole."""
    path = Path(path)
    total = _size(path) * 2
    done = 0

    def advance(count: int) -> None:
        nonlocal done
        done += count
        if progress is not None:
            progress(done, total)

    report = ReplayReport()
    workplaces: set[str] = set()
    records = 0
    for item in read_capture(path, advance):
        report.lines += 1
        if isinstance(item, BadLine):
            report.skipped.append(item)
            continue
        records += 1
        event = _event(item) if item.status == 200 else None
        if isinstance(event, CallEvent) and (workplace := seen_workplace(event)) is not None:
            workplaces.add(workplace)
    if report.lines and not records:
        raise CaptureError(f"{path}: not a capture file (no line of it is a captured POST)")
    report.workplaces = frozenset(workplaces)
    if replayer.compares:
        report.changes = []
    await _decide_all(path, replayer, report, advance)
    return report


async def _decide_all(
    path: Path, replayer: Replayer, report: ReplayReport, advance: Callable[[int], None]
) -> None:
    presence = _Presence()
    decided: set[str] = set()
    for item in read_capture(path, advance):
        if isinstance(item, BadLine):
            continue  # reported by the first pass
        if item.status != 200:
            report.refused += 1
            continue
        report.notifications += 1
        event = _event(item)
        if isinstance(event, BadLine):
            report.skipped.append(event)
            continue
        if event is None:
            continue
        if event.state is not CallState.TRYING:
            presence.apply(event, item.received_at_s)
            continue
        if not is_parked(event, report.workplaces):
            continue
        if event.call.id in decided:
            report.duplicates += 1
            continue
        decided.add(event.call.id)
        at = datetime.fromtimestamp(item.received_at_s, UTC)
        decision, after = await replayer.decide(event, at, presence.busy(item.received_at_s))
        call = ReplayedCall(
            item.line, event.call.id, at, event.caller.number, event.callee.number, decision
        )
        report.calls.append(call)
        changed = after is not None and destination_of(after) != call.destination
        if changed and after is not None and report.changes is not None:
            report.changes.append(Change(call, after))
    report.skipped.sort()


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError as exc:
        raise CaptureError(f"{path}: cannot read: {exc.strerror or exc}") from exc
