"""The routing decision: caller + rules + availability -> :class:`Decision`. Pure and fast.

Order (SPEC §5): the caller's personal manager (the per-client override from the store, else
``rules.clients``) -> the manager of the longest matching prefix -> the fallback managers in
order -> ``otherwise``. Every candidate that is available becomes a :class:`Target`, in that order;
the engine transfers to the first and may try the next if MTT refuses. A candidate is skipped,
with a reason, when off schedule, busy, or at a workplace MTT does not list.
"""

from __future__ import annotations

import enum
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from router.numbers import try_normalize
from router.rules.model import Manager, Otherwise, Rules


class Action(enum.StrEnum):
    """What the engine does with the parked call."""

    TRANSFER = "transfer"  # transferCall to targets[0]
    TERMINATE = "terminate"  # terminateCall: the PBX routes the call its usual way at once
    WAIT = "wait"  # nothing: the PBX routes the call when the parking window ends


class MatchKind(enum.StrEnum):
    """How a target was found."""

    CLIENT = "client"
    PREFIX = "prefix"
    FALLBACK = "fallback"
    NONE = "none"


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
            "targets": [
                {"manager": t.manager, "workplace": t.workplace, "via": t.via.value}
                for t in self.targets
            ],
            "reasons": list(self.reasons),
        }


def _candidates(
    number: str | None,
    caller: str | None,
    rules: Rules,
    client_manager: str | None,
    reasons: list[str],
) -> list[tuple[str, MatchKind]]:
    """Manager ids to consider, in decision order, each with how it was found."""
    found: list[tuple[str, MatchKind]] = []
    if number is None:
        shown = "missing" if not caller else f"unreadable ({caller!r})"
        reasons.append(f"caller number is {shown}: treated as an unknown caller")
    else:
        personal = None
        if client_manager is not None:
            if client_manager in rules.managers:
                personal = client_manager
                reasons.append(f"caller {number} is client of {personal} (client store)")
            else:
                reasons.append(
                    f"client store names unknown manager {client_manager!r} for {number}: ignored"
                )
        if personal is None:
            personal = rules.clients.get(number)
            if personal is not None:
                reasons.append(f"caller {number} is client of {personal}")
            else:
                reasons.append(f"caller {number} is not a listed client")
        if personal is not None:
            found.append((personal, MatchKind.CLIENT))
        prefix = rules.match_prefix(number)
        if prefix is not None:
            reasons.append(f"caller {number} matches prefix {prefix[0]}: {prefix[1]}")
            found.append((prefix[1], MatchKind.PREFIX))
    found.extend((manager, MatchKind.FALLBACK) for manager in rules.fallback)
    return found


def _unavailable(
    manager: Manager,
    local_now: datetime,
    busy: Collection[str],
    known_workplaces: Collection[str] | None,
) -> str | None:
    """Why ``manager`` cannot take the call now, or None when available."""
    schedule = manager.schedule
    if schedule is not None and not schedule.is_open_local(local_now):
        if local_now.date() in schedule.except_dates:
            return f"is off schedule ({schedule.name}: {local_now.date()} is a day off)"
        return f"is off schedule ({schedule.name}: {schedule.text})"
    if manager.workplace in busy:
        return f"is busy (workplace {manager.workplace} is on a call)"
    if known_workplaces is not None and manager.workplace not in known_workplaces:
        return f"has workplace {manager.workplace}, not listed by MTT"
    return None


def decide(
    caller: str | None,
    rules: Rules,
    *,
    now: datetime,
    busy: Collection[str] = (),
    known_workplaces: Collection[str] | None = None,
    client_manager: str | None = None,
) -> Decision:
    """Decide what to do with a parked call from ``caller`` (a raw number from the notification).

    ``now`` should be timezone-aware (a naive one is taken as rules-local time); ``busy`` holds
    workplaces known to be on a call; ``known_workplaces``, when not None, the workplaces MTT
    lists; ``client_manager`` overrides ``rules.clients`` for this caller (the per-client store).
    """
    reasons: list[str] = []
    number = try_normalize(caller)
    if now.tzinfo is None:
        local_now = now.replace(tzinfo=rules.timezone)
    else:
        local_now = now.astimezone(rules.timezone)
    targets: list[Target] = []
    seen_managers: set[str] = set()
    taken: dict[str, str] = {}  # workplace -> manager already targeted there
    for manager_id, via in _candidates(number, caller, rules, client_manager, reasons):
        if manager_id in seen_managers:
            continue  # e.g. a client's manager who is also the fallback: judged once
        seen_managers.add(manager_id)
        label = manager_id if via is not MatchKind.FALLBACK else f"fallback {manager_id}"
        manager = rules.managers.get(manager_id)
        if manager is None:  # only rules built in code can get here: the loader checks references
            reasons.append(f"{label} is not a known manager")
            continue
        why_not = _unavailable(manager, local_now, busy, known_workplaces)
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
    if targets:
        first = targets[0]
        reasons.append(f"transfer to {first.manager} {first.workplace}")
        return Decision(Action.TRANSFER, tuple(targets), first.via, tuple(reasons), number)
    if rules.otherwise is Otherwise.WAIT:
        reasons.append("no manager available: wait (otherwise: wait), the PBX routes after parking")
        return Decision(Action.WAIT, (), MatchKind.NONE, tuple(reasons), number)
    reasons.append("no manager available: terminate (otherwise: pbx), the PBX routes it now")
    return Decision(Action.TERMINATE, (), MatchKind.NONE, tuple(reasons), number)
