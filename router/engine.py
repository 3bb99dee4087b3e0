"""The engine: what the daemon does with each notification.

A parked ``trying`` gets exactly one decision: claim the call id, decide (pure,
:func:`router.routing.decide`), then ``transferCall`` to the chosen workplace — trying the next
candidate if MTT refuses, while the decision budget lasts — or ``terminateCall`` to release it to
the PBX. Other call states update who is on a call. ``vpbxNotifications`` refresh the directory.

Every decision ends in exactly one outcome (SPEC §7) and one canonical log line.
"""

from __future__ import annotations

import asyncio
import enum
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import structlog

from router import callmodel
from router.errors import (
    NeedsLoginError,
    StorageError,
    UpstreamConnectionError,
    UpstreamError,
)
from router.events import CallEvent, CallState, Event, VpbxEvent, VpbxEventType
from router.metrics import Metrics
from router.mtt.client import MttClient
from router.routing import Action, Decision, decide
from router.rules.source import RulesHolder
from router.state import CallClaims, Presence

log = structlog.get_logger("router.engine")

CLAIM_TTL_S = 3600.0
"""How long a call id stays claimed: far longer than any redelivery of the same notification."""

BUSY_TTL_S = 4 * 3600.0
"""Safety net: a workplace whose ``finished`` never arrived is free again after this."""

CLIENT_LOOKUP_TIMEOUT_S = 0.3
"""A per-client lookup (Redis) that takes longer than this is skipped; the rules still apply."""


class Outcome(enum.StrEnum):
    """``mtt_router_decisions_total{outcome}``."""

    TRANSFERRED = "transferred"
    FALLBACK_PBX = "fallback_pbx"
    WAITED = "waited"
    MISSED_WINDOW = "missed_window"
    DUPLICATE = "duplicate"
    ERROR = "error"


class ClientLookup(Protocol):
    """Per-client manager overrides kept outside the rules file (Redis, for CRM sync)."""

    async def get(self, number: str) -> str | None:
        """The manager id for a caller number, or ``None``."""
        ...


class Directory(Protocol):
    """What the engine needs to know of the PBX (see :class:`router.directory.Directory`)."""

    numbers: frozenset[str] | None

    @property
    def workplace_ids(self) -> frozenset[str] | None: ...

    def request_refresh(self, what: Any = "all") -> None: ...


@dataclass
class DecisionRecord:
    """What happened to one parked call; also the canonical log line."""

    call_id: str
    caller: str | None
    callee: str | None
    outcome: Outcome = Outcome.ERROR
    manager: str | None = None
    workplace: str | None = None
    matched: str = "none"
    reasons: list[str] = field(default_factory=list)
    attempts: int = 0
    answered: bool = False
    """MTT answered one of our commands (``decision_seconds`` measures up to that answer)."""
    latency_ms: float = 0.0
    error: str | None = None


class Engine:
    """Handles notifications; owns the background tasks it starts."""

    def __init__(
        self,
        *,
        metrics: Metrics,
        client: MttClient,
        rules: RulesHolder,
        directory: Directory,
        claims: CallClaims,
        presence: Presence,
        budget_ms: int,
        clients: ClientLookup | None = None,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._metrics = metrics
        self._client = client
        self._rules = rules
        self._directory = directory
        self._claims = claims
        self._presence = presence
        self._budget_s = budget_ms / 1000.0
        self._clients = clients
        self._now = now
        self._tasks: set[asyncio.Task[Any]] = set()
        self._accepting = True
        self._presence_ops: deque[tuple[bool, str, str]] = deque()
        self._presence_worker = False
        # Bound label children: .labels() costs a dict lookup and a lock per call otherwise.
        self._outcomes = {o: metrics.decisions.labels(o.value) for o in Outcome}

    # -- intake -------------------------------------------------------------------------------

    def handle(self, event: Event, received_at: float) -> None:
        """Act on a parsed notification; never raises, never blocks (work goes to tasks)."""
        if isinstance(event, CallEvent):
            if event.state is CallState.TRYING:
                if callmodel.is_parked_trying(event, self._directory.numbers):
                    # Read once: the same snapshot serves the check and the decision.
                    workplaces = self._directory.workplace_ids
                    if not self._to_workplace(event, workplaces):
                        self._spawn(self._route(event, received_at, workplaces))
                return
            self._track_presence(event)
        elif isinstance(event, VpbxEvent):
            if event.type is VpbxEventType.NUMBERS_CHANGED:
                self._directory.request_refresh("numbers")
            elif event.type is VpbxEventType.WORKPLACES_CHANGED:
                self._directory.request_refresh("workplaces")

    @staticmethod
    def _to_workplace(event: CallEvent, workplaces: frozenset[str] | None) -> bool:
        # A leg towards one of our workplaces is the PBX delivering a call, never a parked one.
        callee = event.callee.account_id or event.callee.id
        return workplaces is not None and callee in workplaces

    def _track_presence(self, event: CallEvent) -> None:
        busy = callmodel.busy_workplace(event)
        if busy is not None:
            self._queue_presence(True, busy, event.call.id)
            return
        free = callmodel.freed_workplace(event)
        if free is not None:
            self._queue_presence(False, free, event.call.id)

    def _queue_presence(self, busy: bool, workplace: str, call_id: str) -> None:
        # One worker applies presence changes in arrival order (connected before finished, even
        # with Redis), and a burst of notifications costs one task instead of one each.
        self._presence_ops.append((busy, workplace, call_id))
        if not self._presence_worker:
            self._presence_worker = True
            self._spawn(self._apply_presence())

    async def _apply_presence(self) -> None:
        try:
            while self._presence_ops:
                busy, workplace, call_id = self._presence_ops.popleft()
                try:
                    if busy:
                        await self._presence.set_busy(workplace, call_id, BUSY_TTL_S)
                    else:
                        await self._presence.set_free(workplace, call_id)
                except Exception as exc:  # one lost update must not stall the ones behind it
                    log.error("presence_update_failed", workplace=workplace, error=repr(exc))
        finally:
            self._presence_worker = False

    # -- task ownership -----------------------------------------------------------------------

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        if not self._accepting:
            coro.close()
            return
        task = asyncio.get_running_loop().create_task(coro)
        # Keep a hard reference: the loop holds only a weak one and would let it vanish mid-call.
        self._tasks.add(task)
        self._metrics.inflight.inc()
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        self._metrics.inflight.dec()
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("task_failed", error=repr(exc))

    @property
    def inflight(self) -> int:
        """Tasks still running."""
        return len(self._tasks)

    async def drain(self, timeout_s: float) -> int:
        """Stop taking work, wait for in-flight tasks; cancel what is left. Returns that count."""
        self._accepting = False
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
        loop = asyncio.get_running_loop()
        deadline = received_at + self._budget_s
        record = DecisionRecord(
            call_id=event.call.id, caller=event.caller.number, callee=event.callee.number
        )
        structlog.contextvars.bind_contextvars(call_id=event.call.id)
        try:
            claimed, override = await self._claim_and_look_up(event)
            if not claimed:
                record.outcome = Outcome.DUPLICATE
                record.reasons.append("call id already claimed: decided once already")
            else:
                await self._decide_and_act(event, record, deadline, workplaces, override)
        except Exception as exc:  # a bug must cost one call, not the daemon
            record.outcome = Outcome.ERROR
            record.error = repr(exc)
            log.exception("decision_crashed")
        finally:
            record.latency_ms = (loop.time() - received_at) * 1000.0
            self._finish(record)

    async def _claim_and_look_up(self, event: CallEvent) -> tuple[bool, str | None]:
        claim = self._claims.claim(event.call.id, CLAIM_TTL_S)
        if self._clients is None or not event.caller.number:
            return await claim, None  # memory: no round trip to overlap, no task to pay for
        # With Redis the claim and the per-client lookup are independent round trips: overlap
        # them (a duplicate's lookup is wasted, but duplicates are rare).
        lookup = asyncio.ensure_future(self._client_override(event.caller.number))
        try:
            claimed = await claim
        except BaseException:
            lookup.cancel()
            raise
        return claimed, await lookup

    async def _decide_and_act(
        self,
        event: CallEvent,
        record: DecisionRecord,
        deadline: float,
        workplaces: frozenset[str] | None,
        override: str | None,
    ) -> None:
        loaded = self._rules.current
        if loaded is None:
            record.reasons.append("no rules loaded: release to the PBX")
            await self._terminate(event, record, deadline)
            return
        decision = decide(
            event.caller.number,
            loaded.rules,
            now=self._now(),
            busy=self._presence.busy(),
            known_workplaces=workplaces,
            client_manager=override,
        )
        record.reasons.extend(decision.reasons)
        record.matched = decision.matched.value
        if decision.action is Action.TRANSFER:
            await self._transfer(event, decision, record, deadline)
        elif decision.action is Action.TERMINATE:
            await self._terminate(event, record, deadline)
        else:
            record.outcome = Outcome.WAITED

    async def _client_override(self, caller: str | None) -> str | None:
        if self._clients is None or not caller:
            return None
        try:
            async with asyncio.timeout(CLIENT_LOOKUP_TIMEOUT_S):
                return await self._clients.get(caller)
        except (StorageError, TimeoutError):
            return None

    async def _transfer(
        self, event: CallEvent, decision: Decision, record: DecisionRecord, deadline: float
    ) -> None:
        loop = asyncio.get_running_loop()
        for target in decision.targets:
            if loop.time() >= deadline:
                break
            record.attempts += 1
            record.manager, record.workplace = target.manager, target.workplace
            try:
                await self._client.transfer_call(
                    event.call, target.workplace, event.transport_id, deadline=deadline
                )
            except (NeedsLoginError, StorageError) as exc:
                record.error = f"{type(exc).__name__}: {exc}"
                record.outcome = Outcome.ERROR
                return
            except UpstreamError as exc:
                record.error = f"{type(exc).__name__}: {exc}"
                record.reasons.append(f"transfer to {target.manager} failed: {exc}")
                record.answered = exc.status is not None
                if loop.time() >= deadline:
                    break  # the budget is spent (a timeout ends exactly here)
                if not _refused(exc):
                    # The request may have reached MTT (the connection broke after it was sent):
                    # another transfer or a terminate could undo a transfer that happened.
                    record.reasons.append("MTT may have applied it: no further command")
                    record.outcome = Outcome.ERROR
                    return
                continue
            record.answered = True
            record.outcome = Outcome.TRANSFERRED
            return
        if loop.time() >= deadline:
            record.outcome = Outcome.MISSED_WINDOW
            record.reasons.append("decision budget spent")
            return
        # Every candidate was refused with time to spare: release the call to the PBX now rather
        # than leave the client in 5 s of silence. The decision still counts as an error.
        record.reasons.append("every candidate failed: release to the PBX")
        error = record.error
        await self._terminate(event, record, deadline)
        if record.outcome is Outcome.FALLBACK_PBX:
            record.outcome, record.error = Outcome.ERROR, error

    async def _terminate(self, event: CallEvent, record: DecisionRecord, deadline: float) -> None:
        loop = asyncio.get_running_loop()
        if loop.time() >= deadline:
            record.outcome = Outcome.MISSED_WINDOW
            return
        record.attempts += 1
        try:
            await self._client.terminate_call(event.call, event.transport_id, deadline=deadline)
        except (UpstreamError, StorageError) as exc:
            record.error = f"{type(exc).__name__}: {exc}"
            record.answered = isinstance(exc, UpstreamError) and exc.status is not None
            record.outcome = Outcome.MISSED_WINDOW if loop.time() >= deadline else Outcome.ERROR
            return
        record.answered = True
        record.outcome = Outcome.FALLBACK_PBX

    def _finish(self, record: DecisionRecord) -> None:
        self._outcomes[record.outcome].inc()
        if record.answered:  # SPEC §7: receipt of trying -> MTT's answer to our command
            self._metrics.decision_seconds.observe(record.latency_ms / 1000.0)
        log.info(
            "decision",
            outcome=record.outcome.value,
            caller=record.caller,
            callee=record.callee,
            manager=record.manager,
            workplace=record.workplace,
            matched=record.matched,
            attempts=record.attempts,
            latency_ms=round(record.latency_ms, 2),
            reasons=record.reasons,
            error=record.error,
        )
        structlog.contextvars.unbind_contextvars("call_id")


def _refused(exc: UpstreamError) -> bool:
    """True when MTT certainly did not apply the command: it answered, or nothing was sent."""
    if isinstance(exc, UpstreamConnectionError):
        return exc.retryable  # refused connection: nothing reached MTT
    return exc.status is not None
