"""Sticky routing (rules ``learn``): a caller who really talked to a manager gets him next time.

A lesson is learned from a call the daemon decided, when all of these hold:

1. **We decided it and MTT took our command.** The call's ``trying`` was claimed and decided
   here, and MTT applied (2xx) one of our commands for it: a ``transferCall``, or the
   ``terminateCall`` that released it to the PBX (shadow mode's release included). A call id we
   never decided, or whose commands MTT refused (a forged ``trying``: MTT knows no such call),
   teaches nothing, whatever ``connected`` and ``finished`` are posted for it.
2. **It was answered at a workplace** (``connected``), and the conversation lasted at least
   ``learn.min_talk_s`` **by our own clock**: from the receipt of that ``connected`` to the
   receipt of the call's ``finished`` (or of a ``hiding`` at that workplace, when the call was
   moved away; a later ``connected`` elsewhere starts the clock again, and the last workplace
   teaches).
3. **MTT's ``duration`` does not contradict it.** ``finished`` carries ``duration`` in whole
   seconds. When present, the lesson is dropped if ``duration + 1`` (its rounding) is less than
   half of our measure: our clock was stretched (a ``finished`` delivered late, or replayed),
   so we cannot tell how long they really talked. Absent, our clock alone decides.
4. **The workplace is one manager's**, in the rules in use when the call ends: the manager we
   transferred the call to when it was answered at his workplace; otherwise the only manager
   the rules give that workplace. A workplace no manager has, or several share (and we did not
   send the call to one of them), teaches nothing.
5. **That manager is not in** ``learn.exclude``, and the rules in use still have ``learn``.

The lesson is ``caller -> manager`` for ``learn.ttl_days`` (the storage's ``learned`` map; a new
lesson replaces the caller's previous one and starts its time again). With no ``learn`` in the
rules nothing is tracked nor learned; entries already learned are kept (unused, see
:class:`router.sources.LearnedSource`) until they expire.

Each process learns from the calls it decided: behind a balancer, the replica that decided a call
must also receive its ``connected`` and ``finished`` (what it learns is shared through Redis).

Per-call state is bounded by count and time (:data:`MAX_CALLS`, :data:`TTL_S`); a call leaves
when it ends, when MTT took none of our commands for it, or after :data:`TTL_S`.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import NamedTuple

import structlog

from router.bounds import Bound
from router.dispatch import Attempt, Command, Result
from router.events import CallEvent, CallState
from router.routing import Decision
from router.rules.model import Rules
from router.state.protocols import LearnedStore
from router.views import RulesView

log = structlog.get_logger("router.learning")

MAX_CALLS = 50_000
"""Decided calls followed at once (the oldest out first): far more than are ever on the line."""
TTL_S = 4 * 3600.0
"""A followed call with no ``finished`` for this long is dropped (no lesson)."""
DURATION_SLACK_S = 1.0
"""MTT's ``duration`` is whole seconds: it may be up to this much under the real talk."""
DURATION_MIN_SHARE = 0.5
"""Below this share of our own measure (after the slack) MTT's ``duration`` contradicts it."""
DAY_S = 86_400.0


class Lesson(NamedTuple):
    """What a call taught: ``caller`` talked to ``manager`` (at ``workplace``) for ``talk_s``."""

    caller: str
    manager: str
    workplace: str
    talk_s: float


class _Call:
    """One decided call being followed."""

    __slots__ = ("applied", "at", "caller", "expires", "sent", "since", "until")

    def __init__(self, caller: str, expires: float) -> None:
        self.caller = caller
        self.expires = expires
        self.applied = False  # MTT took one of our commands for it
        self.sent: tuple[str, str] | None = None  # (workplace, manager) of the applied transfer
        self.at: str | None = None  # the workplace it was last connected at
        self.since = 0.0  # receipt of that connected
        self.until: float | None = None  # receipt of a hiding there (moved away)


class LearningTracker:
    """Follows the calls the daemon decided and writes what they teach (module docstring).

    Without a ``store`` (engines built without one) nothing is followed.

    Worst-case memory: :data:`MAX_CALLS` entries of a call id (at most 256 characters) and a
    small object with the caller's number, about 600 bytes each: some 30 MB.
    """

    def __init__(
        self,
        store: LearnedStore | None = None,
        rules: RulesView | None = None,
        *,
        max_calls: int = MAX_CALLS,
        ttl_s: float = TTL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._rules = rules
        self._max = max_calls
        self._ttl_s = ttl_s
        self._clock = clock
        self._calls: OrderedDict[str, _Call] = OrderedDict()
        # workplace -> manager ids, for one rules object at a time.
        self._owners: tuple[Rules | None, dict[str, list[str]]] = (None, {})

    def __len__(self) -> int:
        return len(self._calls)

    def bound(self) -> Bound:
        """Decided calls followed, and the most there can be."""
        return Bound(len(self._calls), self._max)

    # -- the engine's hooks ---------------------------------------------------------------

    def decided(self, call_id: str, rules: Rules, decision: Decision) -> None:
        """A parked call was decided (before its commands are sent): follow it if it may teach."""
        if self._store is None or rules.learn is None or decision.caller is None:
            return
        now = self._clock()
        calls = self._calls
        calls.pop(call_id, None)
        calls[call_id] = _Call(decision.caller, now + self._ttl_s)
        while calls:
            oldest = next(iter(calls.values()))
            if oldest.expires > now and len(calls) <= self._max:
                break
            calls.popitem(last=False)

    def carried_out(self, call_id: str, attempts: Sequence[Attempt]) -> None:
        """The decision's commands are done: keep following the call only if MTT took one."""
        call = self._calls.get(call_id)
        if call is None:
            return
        for attempt in attempts:
            if attempt.result is Result.APPLIED:
                call.applied = True
                if attempt.command is Command.TRANSFER and attempt.workplace and attempt.manager:
                    call.sent = (attempt.workplace, attempt.manager)
        if not call.applied:
            del self._calls[call_id]

    def observe(self, event: CallEvent, workplace: str | None, received_at: float) -> Lesson | None:
        """A later notification of a call (``received_at`` on the engine's monotonic clock)."""
        calls = self._calls
        if not calls:
            return None
        call = calls.get(event.call.id)
        if call is None:
            return None
        state = event.state
        if state is CallState.CONNECTED:
            if workplace is not None and (workplace != call.at or call.until is not None):
                call.at, call.since, call.until = workplace, received_at, None
        elif state is CallState.HIDING:
            if workplace is not None and workplace == call.at and call.until is None:
                call.until = received_at
        elif state is CallState.FINISHED:
            del calls[event.call.id]
            return self._lesson(event, call, received_at)
        return None

    # -- judging --------------------------------------------------------------------------

    def _lesson(self, event: CallEvent, call: _Call, received_at: float) -> Lesson | None:
        loaded = self._rules.current if self._rules is not None else None
        rules = loaded.rules if loaded is not None else None
        learn = rules.learn if rules is not None else None
        if rules is None or learn is None or self._store is None:
            return None
        why_not: str | None = None
        talk_s = 0.0
        manager: str | None = None
        if not call.applied:
            why_not = "MTT took none of our commands for it"
        elif call.at is None:
            why_not = "never answered at a workplace"
        else:
            talk_s = (call.until if call.until is not None else received_at) - call.since
            duration = event.duration_s
            if talk_s < learn.min_talk_s:
                why_not = f"talked {talk_s:.1f} s, under learn.min_talk_s {learn.min_talk_s:g}"
            elif duration is not None and duration + DURATION_SLACK_S < talk_s * DURATION_MIN_SHARE:
                why_not = f"MTT's duration {duration} s contradicts our {talk_s:.1f} s"
            else:
                manager, why_not = self._manager_at(rules, call.at, call.sent)
                if manager is not None and manager in learn.exclude:
                    why_not = f"{manager} is in learn.exclude"
        if why_not is not None or manager is None:
            log.debug("not_learned", caller=call.caller, workplace=call.at, reasons=[why_not])
            return None
        self._store.remember(call.caller, manager, learn.ttl_days * DAY_S)
        log.info(
            "learned",
            caller=call.caller,
            manager=manager,
            workplace=call.at,
            talk_s=round(talk_s, 1),
            ttl_days=learn.ttl_days,
        )
        assert call.at is not None
        return Lesson(call.caller, manager, call.at, talk_s)

    def _manager_at(
        self, rules: Rules, workplace: str, sent: tuple[str, str] | None
    ) -> tuple[str | None, str | None]:
        """The manager a conversation at ``workplace`` was with, or why it cannot be told."""
        if sent is not None and sent[0] == workplace:
            known = rules.managers.get(sent[1])
            if known is not None and known.workplace == workplace:
                return sent[1], None
        cached, owners = self._owners
        if cached is not rules:
            owners = {}
            for manager in rules.managers.values():
                owners.setdefault(manager.workplace, []).append(manager.id)
            self._owners = (rules, owners)
        found = owners.get(workplace, [])
        if len(found) == 1:
            return found[0], None
        if not found:
            return None, f"workplace {workplace} is no manager's"
        return None, f"workplace {workplace} is shared by {', '.join(sorted(found))}"
