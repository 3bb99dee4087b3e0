"""The routing decision: caller context + rules -> :class:`Decision`. Pure and fast.

Order (rules/README.md, "How a call is decided"): the candidate sources in the rules' ``order``
(:mod:`router.sources`) name the caller's own manager -> his deputy (version 2) -> the line's (or
the top-level) fallback managers in order -> ``otherwise``. With version 1 every source that names
someone adds a candidate (client, then prefix); with version 2 the first source that names someone
decides whose the caller is. Every candidate that is available becomes a :class:`Target`, in that
order; the engine transfers to the first and may try the next if MTT refuses. A candidate is
skipped, with a reason, when off schedule, on a calendar day off, absent, busy, or at a workplace
MTT does not list.
"""

from __future__ import annotations

import enum
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from router.context import CallerContext, MatchKind
from router.rules.calendar import Calendar
from router.rules.model import Manager, Otherwise, Rules
from router.sources import DEFAULT_SOURCES, CandidateSource, in_order

__all__ = ["Action", "Decision", "MatchKind", "Target", "decide"]


class Action(enum.StrEnum):
    """What the engine does with the parked call."""

    TRANSFER = "transfer"  # transferCall to targets[0]
    TERMINATE = "terminate"  # terminateCall: the PBX routes the call its usual way at once
    WAIT = "wait"  # nothing: the PBX routes the call when the parking window ends


@dataclass(frozen=True, slots=True)
class Target:
    """An available manager to transfer the call to."""

    manager: str
    workplace: str
    via: MatchKind


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome for one parked call, with the human-readable chain of reasons behind it."""

    action: Action
    targets: tuple[Target, ...]
    matched: MatchKind
    reasons: tuple[str, ...]
    caller: str | None = None  # the normalised caller number, None when unreadable
    own: str | None = None
    """The caller's own manager: the first a source named, available or not (the hit rate's
    "personal"); ``None`` when no source named anyone."""
    deputy: str | None = None
    """The own manager's deputy (the hit rate's "deputy")."""
    fallback: tuple[str, ...] = ()
    """The fallback managers this call had (the line's or the top-level ones)."""

    @property
    def target(self) -> Target | None:
        """The first target (the one to transfer to), if any."""
        return self.targets[0] if self.targets else None

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (``rules explain --json`` and logs)."""
        return {
            "action": self.action.value,
            "matched": self.matched.value,
            "caller": self.caller,
            "own": self.own,
            "targets": [
                {"manager": t.manager, "workplace": t.workplace, "via": t.via.value}
                for t in self.targets
            ],
            "reasons": list(self.reasons),
        }


def _named(
    context: CallerContext, rules: Rules, chain: Sequence[CandidateSource], reasons: list[str]
) -> list[tuple[str, MatchKind]]:
    """The managers the sources name, in ``order``: all of them with version 1 (client, then
    prefix), only the first with version 2 (the caller's own, then his deputy)."""
    if context.caller is None:
        caller = context.caller_raw
        shown = "missing" if not caller else f"unreadable ({caller!r})"
        reasons.append(f"caller number is {shown}: treated as an unknown caller")
        return []
    found: list[tuple[str, MatchKind]] = []
    for source in chain:
        verdict = source.resolve(context, rules)
        reasons.extend(verdict.reasons)
        if verdict.manager is not None:
            found.append((verdict.manager, source.kind))
            if rules.version >= 2:
                manager = rules.managers.get(verdict.manager)
                if manager is not None and manager.deputy is not None:
                    found.append((manager.deputy, MatchKind.DEPUTY))
                break
    return found


def _unavailable(
    manager: Manager,
    local_now: datetime,
    busy: Collection[str],
    known_workplaces: Collection[str] | None,
    calendar: Calendar | None,
) -> str | None:
    """Why ``manager`` cannot take the call now, or None when available."""
    schedule = manager.schedule
    today = local_now.date()
    if schedule is not None and not schedule.is_open_local(local_now, calendar):
        if today in schedule.except_dates:
            return f"is off schedule ({schedule.name}: {today} is a day off)"
        if calendar is not None and (holiday := calendar.day_off(today)) is not None:
            return f"is off: {today} is a day off ({calendar.country}: {holiday})"
        return f"is off schedule ({schedule.name}: {schedule.text})"
    away = manager.absence_on(today)
    if away is not None:
        return f"is absent ({away[0]} to {away[1]})"
    if manager.workplace in busy:
        return f"is busy (workplace {manager.workplace} is on a call)"
    if known_workplaces is not None and manager.workplace not in known_workplaces:
        return f"has workplace {manager.workplace}, not listed by MTT"
    return None


def decide(
    context: CallerContext,
    rules: Rules,
    chain: Sequence[CandidateSource] | None = None,
) -> Decision:
    """Decide what to do with the parked call that ``context`` describes.

    The sources of ``chain`` (default: the registered sources named in ``rules.order``, see
    :func:`router.sources.in_order`) are walked in order, each that names a manager adding a
    candidate, then the fallback managers; each candidate is judged against ``context.now``
    (a naive time is taken as rules-local), ``context.busy`` and ``context.known_workplaces``.
    """
    reasons: list[str] = []
    number = context.caller
    now = context.now
    if now.tzinfo is None:
        local_now = now.replace(tzinfo=rules.timezone)
    else:
        local_now = now.astimezone(rules.timezone)
    busy, known_workplaces = context.busy, context.known_workplaces
    targets: list[Target] = []
    seen_managers: set[str] = set()
    taken: dict[str, str] = {}  # workplace -> manager already targeted there
    if chain is None:
        chain = in_order(rules, DEFAULT_SOURCES)
    candidates = _named(context, rules, chain, reasons)
    own = candidates[0][0] if candidates else None
    deputy = next((m for m, via in candidates if via is MatchKind.DEPUTY), None)
    fallback, otherwise, line_own = rules.fallback_for(context.callee)
    if line_own:
        reasons.append(f"line {context.callee} has its own fallback")
    candidates.extend((manager, MatchKind.FALLBACK) for manager in fallback)
    calendar = rules.calendar
    for manager_id, via in candidates:
        if manager_id in seen_managers:
            continue  # e.g. a client's manager who is also the fallback: judged once
        seen_managers.add(manager_id)
        label = manager_id if via is not MatchKind.FALLBACK else f"fallback {manager_id}"
        if via is MatchKind.DEPUTY:
            label = f"deputy {manager_id}"
        manager = rules.managers.get(manager_id)
        if manager is None:  # only rules built in code can get here: the loader checks references
            reasons.append(f"{label} is not a known manager")
            continue
        why_not = _unavailable(manager, local_now, busy, known_workplaces, calendar)
        if why_not is not None:
            reasons.append(f"{label} {why_not}")
        elif manager.workplace in taken:
            reasons.append(
                f"{label} shares workplace {manager.workplace} with {taken[manager.workplace]}"
            )
        else:
            reasons.append(f"{label} is available")
            taken[manager.workplace] = manager_id
            targets.append(Target(manager_id, manager.workplace, via))
    extra = (own, deputy, fallback)
    if targets:
        first = targets[0]
        reasons.append(f"transfer to {first.manager} {first.workplace}")
        return Decision(Action.TRANSFER, tuple(targets), first.via, tuple(reasons), number, *extra)
    if otherwise is Otherwise.WAIT:
        reasons.append("no manager available: wait (otherwise: wait), the PBX routes after parking")
        return Decision(Action.WAIT, (), MatchKind.NONE, tuple(reasons), number, *extra)
    reasons.append("no manager available: terminate (otherwise: pbx), the PBX routes it now")
    return Decision(Action.TERMINATE, (), MatchKind.NONE, tuple(reasons), number, *extra)
