"""The engine: what the daemon does with each notification.

A parked ``trying`` gets exactly one decision, in four steps:

1. **gather** — one storage step claims the call id and answers every read the candidate sources
   declared (:mod:`router.sources`), into an immutable :class:`~router.context.CallerContext`;
2. **fetch** — sources with their own I/O run, only when the sources before them named nobody;
3. **decide** — :func:`router.routing.decide`, pure;
4. **carry out** — :mod:`router.dispatch` sends the commands and computes the one outcome.

Other call states update who is on a call; ``vpbxNotifications`` refresh the directory. Every
decision ends in exactly one outcome (README.md, "Watch it") and one canonical log line.

The engine depends on protocols only (a :class:`~router.dispatch.Commander`, a :class:`RulesView`,
a :class:`DirectoryView`, a :class:`Clock` and the storage seams), so tests build it with fakes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import Any

import structlog

from router import callmodel
from router.answers import AnswerTracker
from router.audit import CallAudit
from router.bounds import Bound
from router.clock import Clock
from router.context import CallerContext, Verdict
from router.dispatch import Commander, DecisionRecord, Outcome, Sender, carry_out, conclude
from router.events import CallEvent, CallState, Event, VpbxEvent, VpbxEventType
from router.learning import LearningTracker
from router.log_limit import LineLimiter
from router.metrics import Metrics
from router.numbers import try_normalize
from router.presence_queue import PresenceQueue
from router.reroute import Rerouter
from router.routing import Decision, decide
from router.rules.model import Rules
from router.sources import (
    DEFAULT_SOURCES,
    CandidateSource,
    FetchingSource,
    in_order,
    next_fetch,
    reads_for,
)
from router.state.protocols import CallStore, Presence, Reroutes
from router.views import DirectoryView, RolloutView, RulesView

log = structlog.get_logger("router.engine")

RESERVED_SHARE = 5
"""One in this many of ``server.max_inflight`` decisions is kept for callers the rules list as
clients: a flood of unknown callers (forged ones have made-up numbers) sheds before they do."""
CLAIM_TTL_S = 3600.0
"""How long a call id stays claimed: far longer than any redelivery of the same notification."""


class Engine:
    """Handles notifications; owns the background tasks it starts."""

    def __init__(
        self,
        *,
        metrics: Metrics,
        commander: Commander,
        rules: RulesView,
        directory: DirectoryView,
        calls: CallStore,
        presence: Presence,
        budget_ms: int,
        clock: Clock,
        sources: Mapping[str, CandidateSource] = DEFAULT_SOURCES,
        on_decision: Callable[[DecisionRecord], None] | None = None,
        rollout: RolloutView | None = None,
        answers: AnswerTracker | None = None,
        learning: LearningTracker | None = None,
        audit: CallAudit | None = None,
        max_inflight: int | None = None,
        reroutes: Reroutes | None = None,
    ) -> None:
        self._metrics = metrics
        self._commander = commander
        self._rules = rules
        self._directory = directory
        self._calls = calls
        self._presence = presence
        self._budget_s = budget_ms / 1000.0
        self._clock = clock
        self._sources = sources
        self._on_decision = on_decision
        self._rollout = rollout
        self._answers = answers
        self._learning = learning if learning is not None else LearningTracker()
        self._max_inflight = max_inflight
        self._deciding = 0
        self._shed_lines = LineLimiter()
        # The directory's terminals and park list, when it has them (fakes may not): checked once.
        self._pbx = callmodel.pbx_view(directory)
        self._audit = audit if audit is not None else CallAudit(metrics, self._pbx)
        self._chain_for: tuple[Rules | None, tuple[CandidateSource, ...], bool] = (None, (), False)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._accepting = True
        self._presence_queue = PresenceQueue(presence, self._spawn)
        self.reroutes = Rerouter(reroutes, commander, presence, rules, metrics, clock, self._spawn)
        # Bound label children: .labels() costs a dict lookup and a lock per call otherwise.
        self._outcomes = {o: metrics.decisions.labels(o.value) for o in Outcome}

    # -- intake -------------------------------------------------------------------------------

    def handle(self, event: Event, received_at: float) -> None:
        """Act on a parsed notification; never raises, never blocks (work goes to tasks).

        ``received_at`` is the receipt time on :meth:`Clock.monotonic`.
        """
        if isinstance(event, CallEvent):
            state, pbx = event.state, self._pbx
            if state is CallState.TRYING:
                self._audit.observe(event, received_at)
                named = pbx.park_named if pbx is not None else ()
                if callmodel.is_parked_trying(event, self._directory.numbers, named):
                    # Read once: the same snapshot serves the check and the decision.
                    workplaces = self._directory.workplace_ids
                    if not self._to_workplace(event, workplaces):
                        self._decide_later(event, received_at, workplaces)
                return
            # Looked up once per notification, for the audit and for presence alike.
            workplace = (
                callmodel.workplace_of(event, pbx) if state in callmodel.WORKPLACE_STATES else None
            )
            self._audit.observe(event, received_at, workplace)
            self._learning.observe(event, workplace, received_at)
            self._track_presence(event, workplace)
            self.reroutes.observe(event, workplace)
        elif isinstance(event, VpbxEvent):
            if event.type is VpbxEventType.NUMBERS_CHANGED:
                self._directory.request_refresh("numbers")
            elif event.type is VpbxEventType.WORKPLACES_CHANGED:
                self._directory.request_refresh("workplaces")

    def _decide_later(
        self, event: CallEvent, received_at: float, workplaces: frozenset[str] | None
    ) -> None:
        if not self._accepting:
            return
        cap = self._max_inflight
        # Near the cap (a flood, forged or not) the last slots are kept for callers the rules
        # list as clients, whose manager waits for them; anyone else goes to the PBX.
        if (
            cap is not None
            and self._deciding >= cap - max(1, cap // RESERVED_SHARE)
            and (self._deciding >= cap or not self._listed_client(event))
        ):
            self._shed(event, received_at)
            return
        self._deciding += 1  # from here: _route's finally gives it back
        self._spawn(self._route(event, received_at, workplaces))

    def _listed_client(self, event: CallEvent) -> bool:
        loaded = self._rules.current
        caller = try_normalize(event.caller.number) if loaded is not None else None
        return caller is not None and loaded is not None and caller in loaded.rules.clients

    def _shed(self, event: CallEvent, received_at: float) -> None:
        # Over the cap: no command at all, the PBX routes the call when parking ends.
        self._outcomes[Outcome.SHED].inc()
        if self._on_decision is not None:  # counted by the status page's history, not listed
            self._on_decision(
                DecisionRecord(event.call.id, event.caller.number, None, Outcome.SHED)
            )
        if (held := self._shed_lines.allow(received_at)) is not None:
            log.warning(
                "decision_shed",
                call_id=event.call.id,
                caller=event.caller.number,
                max_inflight=self._max_inflight,
                held_back=held,
                hint="more parked calls at once than server.max_inflight: left to the PBX",
            )

    def _to_workplace(self, event: CallEvent, workplaces: frozenset[str] | None) -> bool:
        # A leg towards one of our workplaces is the PBX delivering a call, never a parked one.
        if self._pbx is not None:
            return callmodel.workplace_of(event, self._pbx) is not None
        callee = event.callee.account_id or event.callee.id
        return workplaces is not None and callee in workplaces

    def _track_presence(self, event: CallEvent, workplace: str | None) -> None:
        state = event.state
        busy = workplace if state in callmodel.BUSY_STATES else None
        if self._answers is not None:
            self._answers.observe(event.call.id, state, busy)
        if busy is not None:
            self._presence_queue.busy(busy, event.call.id)
        elif workplace is not None and state in callmodel.FREE_STATES:
            self._presence_queue.free(workplace, event.call.id)

    # -- task ownership -----------------------------------------------------------------------

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        if not self._accepting:
            coro.close()
            return
        task = asyncio.get_running_loop().create_task(coro)
        # Keep a hard reference: the loop holds only a weak one and would let it vanish mid-call.
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("task_failed", error=repr(exc))

    @property
    def inflight(self) -> int:
        """Tasks still running."""
        return len(self._tasks)

    def bounds(self) -> dict[str, Bound]:
        """How full each of the engine's bounded maps is (``/status`` "bounds")."""
        found = {"audit": self._audit.bound(), "presence_queue": self._presence_queue.bound()}
        found["reroutes"] = self.reroutes.bound()
        if self._answers is not None:
            found["answers"] = self._answers.bound()
        if self._max_inflight is not None:
            found["decisions"] = Bound(self._deciding, self._max_inflight)
        return found

    async def settle(self) -> None:
        """Wait until no task is in flight (tasks started meanwhile included)."""
        while self._tasks:
            await asyncio.wait(set(self._tasks))

    async def drain(self, timeout_s: float) -> int:
        """Stop taking work, wait for in-flight tasks; cancel what is left. Returns that count."""
        self._accepting = False
        self.reroutes.drop()  # pending re-routes: one log line counting them
        if self._tasks:
            log.info("draining", inflight=len(self._tasks), timeout_s=timeout_s)
            await asyncio.wait(set(self._tasks), timeout=timeout_s)
        left = list(self._tasks)
        for task in left:
            task.cancel("shutdown: drain timed out")
        if left:
            await asyncio.wait(left, timeout=1.0)
            log.warning("drain_cancelled", count=len(left))
        return len(left)

    # -- the decision -------------------------------------------------------------------------

    async def _route(
        self, event: CallEvent, received_at: float, workplaces: frozenset[str] | None
    ) -> None:
        structlog.contextvars.bind_contextvars(call_id=event.call.id)
        record: DecisionRecord | None = None
        self._metrics.inflight.inc()
        try:
            record = await self._decide_and_send(event, received_at, workplaces)
        except Exception as exc:  # a bug must cost one call, not the daemon
            record = _failed(event, repr(exc))
            log.exception("decision_crashed")
        finally:
            # Also when cancelled (a drain that timed out): every decision gets its line.
            if record is None:
                record = _failed(event, None)
            self._deciding -= 1
            self._metrics.inflight.dec()
            self._finish(record, (self._clock.monotonic() - received_at) * 1000.0)

    def _chain(self, rules: Rules | None) -> tuple[tuple[CandidateSource, ...], bool]:
        """The sources of ``rules.order`` and whether any does I/O; cached per rules version."""
        cached_rules, chain, fetching = self._chain_for
        if rules is not cached_rules:
            chain = () if rules is None else in_order(rules, self._sources)
            fetching = any(isinstance(source, FetchingSource) for source in chain)
            self._chain_for = (rules, chain, fetching)
        return chain, fetching

    async def _decide_and_send(
        self,
        event: CallEvent,
        received_at: float,
        workplaces: frozenset[str] | None,
    ) -> DecisionRecord:
        loaded = self._rules.current  # one snapshot for the whole decision
        rules = loaded.rules if loaded is not None else None
        chain, fetching = self._chain(rules)
        caller = try_normalize(event.caller.number)
        gathered = await self._calls.claim_and_read(
            event.call.id, CLAIM_TTL_S, reads_for(caller, chain, rules)
        )
        if not gathered.claimed:
            return DecisionRecord(
                event.call.id,
                event.caller.number,
                event.callee.number,
                Outcome.DUPLICATE,
                reasons=("call id already claimed: decided once already",),
            )
        decision: Decision | None = None
        live = True
        if rules is not None:
            context = CallerContext(
                caller_raw=event.caller.number,
                caller=caller,
                callee=try_normalize(event.callee.number),
                now=self._clock.now(),
                busy=self._presence.busy(),
                known_workplaces=workplaces,
                stored=gathered.values,
                deadline=received_at + self._budget_s,
            )
            if fetching:
                context = await self._fetch(context, rules, chain)
            decision = decide(context, rules, chain)
            if self._rollout is not None:
                live = self._rollout.is_live(context.callee)
            if self._answers is not None:
                self._answers.decided(event.call.id, rules, decision)
            self._learning.decided(event.call.id, rules, decision)
        sender = Sender(
            self._commander,
            event.call,
            event.transport_id,
            deadline=received_at + self._budget_s,
            clock=self._clock.monotonic,
        )
        attempts = await carry_out(decision, sender, live=live)
        self._learning.carried_out(event.call.id, attempts)
        done = conclude(decision, attempts, live=live)
        self.reroutes.decided(event, rules, decision, done)
        return DecisionRecord(
            event.call.id,
            event.caller.number,
            event.callee.number,
            done.outcome,
            manager=done.manager,
            workplace=done.workplace,
            matched=decision.matched.value if decision is not None else "none",
            reasons=(decision.reasons if decision is not None else ()) + done.reasons,
            attempts=done.attempts,
            answered=done.answered,
            error=done.error,
        )

    @staticmethod
    async def _fetch(
        context: CallerContext, rules: Rules, chain: Sequence[CandidateSource]
    ) -> CallerContext:
        while (source := next_fetch(context, rules, chain)) is not None:
            try:
                verdict = await source.fetch(context, rules)
            except Exception as exc:  # a source's bug must cost its verdict, not the call
                log.exception("source_crashed", source=source.name)
                verdict = Verdict(None, (f"{source.name} failed: {type(exc).__name__}",))
            context = context.with_fetched(source.name, verdict)
        return context

    def _finish(self, record: DecisionRecord, latency_ms: float) -> None:
        self._outcomes[record.outcome].inc()
        if record.answered:  # receipt of trying -> MTT's answer to our command
            self._metrics.decision_seconds.observe(latency_ms / 1000.0)
        log.info(
            "decision",
            outcome=record.outcome.value,
            caller=record.caller,
            callee=record.callee,
            manager=record.manager,
            workplace=record.workplace,
            matched=record.matched,
            attempts=record.attempts,
            latency_ms=round(latency_ms, 2),
            reasons=list(record.reasons),
            error=record.error,
        )
        structlog.contextvars.unbind_contextvars("call_id")
        if self._on_decision is not None:
            self._on_decision(record._replace(latency_ms=latency_ms))


def _failed(event: CallEvent, error: str | None) -> DecisionRecord:
    """The record of a decision that crashed (``error``) or was cancelled."""
    return DecisionRecord(
        event.call.id, event.caller.number, event.callee.number, Outcome.ERROR, error=error
    )
