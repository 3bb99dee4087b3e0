"""No-answer re-routes (rules ``no_answer``): a transferred call nobody picks up moves on.

After the engine transferred a parked call to workplace W, the call is watched. A ``hiding`` at W
(the manager declined, or W stopped ringing) or no ``connected`` within ``after_s`` sends
``transferCall`` for the same call to the next candidate of its decision: the targets after the one
transferred to (the deputy, then the fallback managers), skipping those now busy. At most
``max_hops`` times; each hop is watched the same way. A ``connected`` (anywhere) or ``finished``
ends the watch. Shadow calls are never watched: nothing was transferred.

Exactly once, never after an answer: every replica that receives a ``connected`` marks the call
answered in the storage, and a hop is sent only when :meth:`Reroutes.claim_hop` (that mark checked
and the hop claimed in one atomic step) says so. A storage that cannot answer means no re-route.
This is the daemon's one deliberate command on a call that is no longer parked
(docs/CALL_MODEL.md, "Commands").

:func:`watch_for`, :func:`on_event` and :func:`next_hop` decide (pure); :class:`Rerouter` keeps the
watched calls (bounded), their timers and the I/O; the engine owns its tasks.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

import structlog

from router.bounds import Bound
from router.clock import Clock
from router.context import MatchKind
from router.dispatch import Attempt, Commander, Conclusion, Outcome, Result, Sender
from router.errors import StorageError
from router.events import CallEvent, CallRef, CallState
from router.metrics import Metrics
from router.routing import Decision, Target
from router.rules.model import NoAnswer, Rules
from router.state.protocols import Presence, Reroutes
from router.views import RulesView

log = structlog.get_logger("router.engine")

SEND_S = 3.0
"""A re-route's ``transferCall`` is answered within this, or it failed."""
MAX_WATCHED = 10_000
"""Calls watched at once, at most: past it the oldest watch is dropped. Only calls the daemon
transferred are watched, each for at most ``max_hops`` x ``after_s``."""


# -- the pure part ---------------------------------------------------------------------------


class Watch(NamedTuple):
    """A transferred call waiting for an answer: where it rings, and who is left to try."""

    call: CallRef
    transport_id: str | None
    manager: str
    workplace: str
    """Where the last transfer sent the call."""
    remaining: tuple[Target, ...]
    """The decision's targets after that one, in order."""
    hops: int
    """Re-routes done so far."""
    rule: NoAnswer


class Trigger(enum.StrEnum):
    """What moved a watched call on."""

    HIDING = "hiding"
    TIMEOUT = "no_answer"


class Step(enum.StrEnum):
    """What a notification does to a watch."""

    KEEP = "keep"
    END = "end"
    HOP = "hop"


class Hop(NamedTuple):
    """The next candidate (``None``: nobody left), who is left after it, and why."""

    target: Target | None
    remaining: tuple[Target, ...]
    reasons: tuple[str, ...]


def watch_for(
    call: CallRef,
    transport_id: str | None,
    rules: Rules | None,
    decision: Decision | None,
    workplace: str | None,
) -> Watch | None:
    """The watch of a call transferred to ``workplace``, or ``None``: no ``no_answer`` rule, or
    nobody after that target to move the call on to."""
    rule = rules.no_answer if rules is not None else None
    if rule is None or decision is None or workplace is None:
        return None
    targets = decision.targets
    at = next((i for i, t in enumerate(targets) if t.workplace == workplace), None)
    if at is None or at + 1 >= len(targets):
        return None
    return Watch(call, transport_id, targets[at].manager, workplace, targets[at + 1 :], 0, rule)


def on_event(watch: Watch, state: CallState, workplace: str | None) -> Step:
    """``connected`` anywhere or ``finished`` ends the watch; ``hiding`` where the call was sent
    moves it on (a ``hiding`` elsewhere is the ringing our own transfer ended)."""
    if state is CallState.CONNECTED or state is CallState.FINISHED:
        return Step.END
    if state is CallState.HIDING and workplace == watch.workplace:
        return Step.HOP
    return Step.KEEP


def _label(target: Target) -> str:
    if target.via is MatchKind.DEPUTY:
        return f"deputy {target.manager}"
    if target.via is MatchKind.FALLBACK:
        return f"fallback {target.manager}"
    return target.manager


def next_hop(watch: Watch, trigger: Trigger, busy: frozenset[str]) -> Hop:
    """The first remaining candidate not on a call now, with the reason chain."""
    if trigger is Trigger.HIDING:
        reasons = [f"{watch.manager} {watch.workplace} let the call go (hiding)"]
    else:
        reasons = [f"{watch.manager} {watch.workplace} did not answer in {watch.rule.after_s:g} s"]
    for i, target in enumerate(watch.remaining):
        label = _label(target)
        if target.workplace in busy:
            reasons.append(f"{label} is busy (workplace {target.workplace} is on a call)")
            continue
        reasons.append(f"{label} is available")
        reasons.append(f"re-route to {target.manager} {target.workplace}")
        return Hop(target, watch.remaining[i + 1 :], tuple(reasons))
    reasons.append("no candidate left: the PBX goes on with the call")
    return Hop(None, (), tuple(reasons))


# -- timers and I/O --------------------------------------------------------------------------


class Cancellable(Protocol):
    """A scheduled callback (:class:`asyncio.TimerHandle`)."""

    def cancel(self) -> None:
        """Do not run it."""
        ...


Later = Callable[[float, Callable[[], None]], Cancellable]
"""Run a callback after a delay in seconds (default: the running loop's ``call_later``)."""
Spawn = Callable[[Coroutine[Any, Any, Any]], None]


def _call_later(delay_s: float, callback: Callable[[], None]) -> Cancellable:
    return asyncio.get_running_loop().call_later(delay_s, callback)


@dataclass(slots=True)
class _Entry:
    watch: Watch
    timer: Cancellable | None = None
    hopping: bool = False
    """A hop is being claimed or sent: triggers wait for its end."""


class Rerouter:
    """The watched calls of one process, their timers, and the hops.

    Timers are loop callbacks (a waiting call costs no task); a hop runs as a task the engine
    owns (``spawn``), so a drain waits for a hop in flight. :meth:`drop` ends every watch.
    Worst-case memory: ``max_watched`` small entries (a call id, two workplaces, a few targets).
    """

    def __init__(
        self,
        store: Reroutes | None,
        commander: Commander,
        presence: Presence,
        rules: RulesView,
        metrics: Metrics,
        clock: Clock,
        spawn: Spawn,
        *,
        send_s: float = SEND_S,
        later: Later = _call_later,
        max_watched: int = MAX_WATCHED,
    ) -> None:
        self._store = store
        self._commander = commander
        self._presence = presence
        self._rules = rules
        self._clock = clock
        self._send_s = send_s
        self._spawn = spawn
        self.later = later
        """Schedules the timers (tests swap in a fake)."""
        self._max = max_watched
        self._entries: dict[str, _Entry] = {}
        self._closed = False
        self._results = {r: metrics.reroutes.labels(r) for r in ("transferred", "failed")}

    def bound(self) -> Bound:
        """Calls watched, and the most there can be (``/status`` "bounds": ``reroutes``)."""
        return Bound(len(self._entries), self._max)

    def decided(
        self, event: CallEvent, rules: Rules | None, decision: Decision | None, done: Conclusion
    ) -> None:
        """A parked call was decided: watch it when it was transferred (live) and the rules have
        ``no_answer`` (without a store: never)."""
        if done.outcome is not Outcome.TRANSFERRED or self._store is None or self._closed:
            return
        watch = watch_for(event.call, event.transport_id, rules, decision, done.workplace)
        if watch is None:
            return
        self._end(watch.call.id)
        while len(self._entries) >= self._max:
            self._end(next(iter(self._entries)))
        entry = _Entry(watch)
        self._entries[watch.call.id] = entry
        self._arm(entry)

    def observe(self, event: CallEvent, workplace: str | None) -> None:
        """A later notification of some call (``workplace``: where its leg is)."""
        call_id, state = event.call.id, event.state
        if state is CallState.CONNECTED and self._store is not None and self._active():
            self._spawn(self._mark(self._store, call_id))
        entry = self._entries.get(call_id)
        if entry is None:
            return
        step = on_event(entry.watch, state, workplace)
        if step is Step.END:
            self._end(call_id)
        elif step is Step.HOP and not entry.hopping:
            self._hop(entry, Trigger.HIDING)

    def drop(self) -> int:
        """Stop watching (shutdown): one log line counting the re-routes left pending."""
        self._closed = True
        pending = sum(not entry.hopping for entry in self._entries.values())
        for call_id in list(self._entries):
            self._end(call_id)
        if pending:
            log.warning("reroutes_dropped", count=pending, reason="shutdown")
        return pending

    # -- internals ----------------------------------------------------------------------------

    def _active(self) -> bool:
        loaded = self._rules.current
        return loaded is not None and loaded.rules.no_answer is not None

    @staticmethod
    async def _mark(store: Reroutes, call_id: str) -> None:
        try:
            await store.mark_answered(call_id)
        except StorageError as exc:  # counted by the storage; a claim then fails closed too
            log.debug("reroute_mark_failed", call_id=call_id, error=str(exc))

    def _arm(self, entry: _Entry) -> None:
        call_id = entry.watch.call.id

        def fire() -> None:
            entry.timer = None
            if self._entries.get(call_id) is entry and not entry.hopping:
                self._hop(entry, Trigger.TIMEOUT)

        entry.timer = self.later(entry.watch.rule.after_s, fire)

    def _end(self, call_id: str) -> None:
        entry = self._entries.pop(call_id, None)
        if entry is not None and entry.timer is not None:
            entry.timer.cancel()
            entry.timer = None

    def _forget(self, entry: _Entry) -> None:
        if self._entries.get(entry.watch.call.id) is entry:
            self._end(entry.watch.call.id)

    def _hop(self, entry: _Entry, trigger: Trigger) -> None:
        entry.hopping = True
        if entry.timer is not None:
            entry.timer.cancel()
            entry.timer = None
        self._spawn(self._run_hop(entry, trigger))

    async def _run_hop(self, entry: _Entry, trigger: Trigger) -> None:
        watch = entry.watch
        hop = next_hop(watch, trigger, self._presence.busy())
        number = watch.hops + 1
        keep = False
        try:
            if hop.target is None:
                log.info(
                    "reroute_skipped", call_id=watch.call.id, hop=number, reasons=list(hop.reasons)
                )
                return
            assert self._store is not None  # no store, no watch
            try:
                claimed = await self._store.claim_hop(watch.call.id, number)
            except StorageError as exc:
                reasons = (*hop.reasons, "the storage did not answer: not re-routed")
                self._report(watch, trigger, number, hop.target, None, reasons, str(exc))
                return
            if not claimed:
                log.info(
                    "reroute_not_claimed",
                    call_id=watch.call.id,
                    hop=number,
                    reason="answered, or another replica re-routed it",
                )
                return
            target = hop.target
            sender = Sender(
                self._commander,
                watch.call,
                watch.transport_id,
                deadline=self._clock.monotonic() + self._send_s,
                clock=self._clock.monotonic,
            )
            attempt = await sender.transfer(target.manager, target.workplace)
            self._report(watch, trigger, number, target, attempt, hop.reasons, attempt.error)
            if attempt.result is Result.APPLIED and number < watch.rule.max_hops and hop.remaining:
                keep = not self._closed and self._entries.get(watch.call.id) is entry
                if keep:
                    entry.watch = watch._replace(
                        manager=target.manager,
                        workplace=target.workplace,
                        remaining=hop.remaining,
                        hops=number,
                    )
                    entry.hopping = False
                    self._arm(entry)
        finally:
            if not keep:
                self._forget(entry)

    def _report(
        self,
        watch: Watch,
        trigger: Trigger,
        number: int,
        target: Target,
        attempt: Attempt | None,
        reasons: Sequence[str],
        error: str | None,
    ) -> None:
        """The one ``reroute`` line of a hop and ``mtt_router_reroutes_total{result}``."""
        applied = attempt is not None and attempt.result is Result.APPLIED
        result = "transferred" if applied else "failed"
        self._results[result].inc()
        if attempt is not None and not applied:
            reasons = (*reasons, f"re-route to {target.manager} failed: {attempt.message}")
            if attempt.result is Result.AMBIGUOUS:
                reasons = (*reasons, "MTT may have applied it: no further command")
        log.info(
            "reroute",
            call_id=watch.call.id,
            result=result,
            hop=number,
            trigger=trigger.value,
            from_manager=watch.manager,
            from_workplace=watch.workplace,
            manager=target.manager,
            workplace=target.workplace,
            reasons=list(reasons),
            error=error,
        )
