"""Carrying a decision out: the commands sent to MTT, and the one place the outcome is computed.

:func:`carry_out` sends ``transferCall`` to each target in turn while MTT certainly did not apply
the previous one, then ``terminateCall`` when every target was refused; each command's result is
an :class:`Attempt` value. :func:`conclude` turns the decision and its attempts into the call's
:class:`Outcome`, reasons and error: nothing else assigns an outcome; :class:`DecisionRecord` is
what the engine reports of each parked call (its ``decision`` line).

The ambiguous-answer rule (docs/CALL_MODEL.md, "Commands"): only a 4xx, or a connection that
was refused before anything was sent, means "not applied, try the next candidate". A 5xx, a
timeout or a connection broken after sending may have been applied: no further command for that
call. No command is sent once the decision budget is spent.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable, Sequence
from typing import NamedTuple, Protocol

from router.errors import (
    NeedsLoginError,
    ServerError,
    StorageError,
    TokenUnavailableError,
    UpstreamConnectionError,
    UpstreamError,
)
from router.events import CallRef
from router.routing import Action, Decision


class Commander(Protocol):
    """Sends the two commands a parked call can get (:class:`router.mtt.client.MttClient`)."""

    async def transfer_call(
        self, call: CallRef, callee_id: str, transport_id: str | None, *, deadline: float
    ) -> None:
        """``transferCall`` to workplace ``callee_id``, answered by ``deadline`` (loop time)."""
        ...

    async def terminate_call(
        self, call: CallRef, transport_id: str | None, *, deadline: float
    ) -> None:
        """``terminateCall``: the PBX routes the call its usual way at once."""
        ...


class Outcome(enum.StrEnum):
    """``mtt_router_decisions_total{outcome}`` (README.md, "Watch it")."""

    TRANSFERRED = "transferred"
    FALLBACK_PBX = "fallback_pbx"
    WAITED = "waited"
    MISSED_WINDOW = "missed_window"
    DUPLICATE = "duplicate"
    ERROR = "error"
    SHADOW = "shadow"
    SHED = "shed"


class Command(enum.StrEnum):
    """The MTT command an attempt sent (or would have sent)."""

    TRANSFER = "transfer"
    TERMINATE = "terminate"


class Result(enum.StrEnum):
    """What became of one command."""

    APPLIED = "applied"
    """MTT answered 2xx."""
    REFUSED = "refused"
    """A 4xx, or a refused connection: MTT certainly did not apply it."""
    AMBIGUOUS = "ambiguous"
    """A 5xx, a timeout or a broken connection after sending: it may have been applied."""
    LATE = "late"
    """The budget was spent before it could be sent, or while it was in flight."""
    NOT_SENT = "not_sent"
    """No usable token, or the token store failed: nothing reached MTT."""


# Attempt and Conclusion are made for every call: NamedTuples, immutable and cheap to build.


class Attempt(NamedTuple):
    """One command and its result."""

    command: Command
    result: Result
    manager: str | None = None
    workplace: str | None = None
    started: bool = True
    """False when the budget was spent before the commander was even called."""
    answered: bool = False
    """MTT answered (any status): ``decision_seconds`` measures up to that answer."""
    error_type: str | None = None
    message: str | None = None

    @property
    def error(self) -> str | None:
        """``Type: message`` of the failure, for the decision line."""
        return None if self.error_type is None else f"{self.error_type}: {self.message}"


class Conclusion(NamedTuple):
    """The outcome of one parked call and what the decision line adds to the reason chain."""

    outcome: Outcome
    reasons: tuple[str, ...] = ()
    error: str | None = None
    manager: str | None = None
    workplace: str | None = None
    attempts: int = 0
    """Commands started."""
    answered: bool = False
    """MTT answered the last command started."""


class DecisionRecord(NamedTuple):
    """What happened to one parked call; also the canonical log line (one per call: a
    NamedTuple, cheap to build)."""

    call_id: str
    caller: str | None
    callee: str | None
    outcome: Outcome
    manager: str | None = None
    workplace: str | None = None
    matched: str = "none"
    reasons: tuple[str, ...] = ()
    attempts: int = 0
    answered: bool = False
    """MTT answered one of our commands (``decision_seconds`` measures up to that answer)."""
    error: str | None = None
    latency_ms: float = 0.0
    """From receipt of the ``trying`` to the end of the decision (set when it is reported)."""


def classify(exc: UpstreamError) -> Result:
    """Whether MTT may have applied a command that failed with ``exc`` (docs/CALL_MODEL.md,
    "Commands"): only a 4xx answer or a refused connection means it certainly did not."""
    if isinstance(exc, UpstreamConnectionError):
        return Result.REFUSED if exc.retryable else Result.AMBIGUOUS
    if isinstance(exc, ServerError):
        return Result.AMBIGUOUS  # a 5xx, or a 2xx whose body we could not read: it may be done
    if exc.status is not None and exc.status < 500:
        return Result.REFUSED
    return Result.AMBIGUOUS


class Sender:
    """Sends one call's commands within its deadline; each send returns an :class:`Attempt`."""

    def __init__(
        self,
        commander: Commander,
        call: CallRef,
        transport_id: str | None,
        *,
        deadline: float,
        clock: Callable[[], float],
    ) -> None:
        self._commander = commander
        self._call = call
        self._transport_id = transport_id
        self._deadline = deadline
        self._clock = clock

    def late(self) -> bool:
        """True once the decision budget is spent."""
        return self._clock() >= self._deadline

    def transfer(self, manager: str, workplace: str) -> Awaitable[Attempt]:
        """``transferCall`` to ``workplace``."""
        return self._send(Command.TRANSFER, manager, workplace)

    def terminate(self) -> Awaitable[Attempt]:
        """``terminateCall``."""
        return self._send(Command.TERMINATE, None, None)

    async def _send(self, command: Command, manager: str | None, workplace: str | None) -> Attempt:
        if self._clock() >= self._deadline:
            return Attempt(command, Result.LATE, manager, workplace, started=False)
        try:
            if command is Command.TRANSFER:
                assert workplace is not None
                await self._commander.transfer_call(
                    self._call, workplace, self._transport_id, deadline=self._deadline
                )
            else:
                await self._commander.terminate_call(
                    self._call, self._transport_id, deadline=self._deadline
                )
        except (NeedsLoginError, TokenUnavailableError, StorageError) as exc:
            # Nothing (more) was sent: no usable token, or the token store failed.
            return Attempt(
                command,
                Result.NOT_SENT,
                manager,
                workplace,
                error_type=type(exc).__name__,
                message=str(exc),
            )
        except UpstreamError as exc:
            # The budget spent means late, whatever the answer (a timeout ends exactly here).
            result = Result.LATE if self.late() else classify(exc)
            return Attempt(
                command,
                result,
                manager,
                workplace,
                answered=exc.status is not None,
                error_type=type(exc).__name__,
                message=str(exc),
            )
        return Attempt(command, Result.APPLIED, manager, workplace, answered=True)


async def carry_out(
    decision: Decision | None, sender: Sender, *, live: bool = True
) -> tuple[Attempt, ...]:
    """Send what ``decision`` asks (``None``: no rules, release the call) and return the attempts.

    Transfers go to each target in order while the previous one was refused; when every target
    was refused, the call is released to the PBX rather than left in 5 s of silence. A shadow call
    (``live=False``) is only released, whatever was decided.
    """
    if decision is None or not live or decision.action is Action.TERMINATE:
        return (await sender.terminate(),)
    if decision.action is Action.WAIT:
        return ()
    attempts: list[Attempt] = []
    for target in decision.targets:
        attempt = await sender.transfer(target.manager, target.workplace)
        attempts.append(attempt)
        if attempt.result is not Result.REFUSED:
            return tuple(attempts)
    attempts.append(await sender.terminate())
    return tuple(attempts)


_FAILED = frozenset({Result.REFUSED, Result.AMBIGUOUS, Result.LATE})


def conclude(
    decision: Decision | None, attempts: Sequence[Attempt], *, live: bool = True
) -> Conclusion:
    """The outcome of a parked call from its decision and attempts: the only place it is set."""
    if decision is not None and not live:
        return _shadow(decision, attempts)
    if decision is not None and len(attempts) == 1 and attempts[0].result is Result.APPLIED:
        # The common case, answered without building lists: one command, and MTT took it.
        only = attempts[0]
        if only.command is Command.TRANSFER:
            outcome = Outcome.TRANSFERRED
            return Conclusion(outcome, (), None, only.manager, only.workplace, 1, True)
        return Conclusion(Outcome.FALLBACK_PBX, (), None, None, None, 1, True)
    reasons: list[str] = []
    if decision is None:
        reasons.append("no rules loaded: release to the PBX")
    started = [a for a in attempts if a.started]
    transfers = [a for a in started if a.command is Command.TRANSFER]
    reasons.extend(
        f"transfer to {a.manager} failed: {a.message}" for a in transfers if a.result in _FAILED
    )
    last = attempts[-1] if attempts else None
    error = last.error if last is not None else None
    if last is None:
        outcome = Outcome.WAITED
    elif last.result is Result.LATE:
        outcome = Outcome.MISSED_WINDOW
        if transfers and last.command is Command.TERMINATE and last.started:
            reasons.append("every candidate failed: release to the PBX")
        elif transfers:
            reasons.append("decision budget spent")
    elif last.command is Command.TRANSFER:
        outcome = Outcome.TRANSFERRED if last.result is Result.APPLIED else Outcome.ERROR
        if last.result is Result.AMBIGUOUS:
            reasons.append("MTT may have applied it: no further command")
    elif transfers:
        # Every candidate was refused: the call went back to the PBX, yet the decision failed.
        reasons.append("every candidate failed: release to the PBX")
        outcome = Outcome.ERROR
        if last.result is Result.APPLIED:
            error = transfers[-1].error
    else:
        outcome = Outcome.FALLBACK_PBX if last.result is Result.APPLIED else Outcome.ERROR
    return Conclusion(
        outcome,
        tuple(reasons),
        error=error,
        manager=transfers[-1].manager if transfers else None,
        workplace=transfers[-1].workplace if transfers else None,
        attempts=len(started),
        answered=started[-1].answered if started else False,
    )


def _shadow(decision: Decision, attempts: Sequence[Attempt]) -> Conclusion:
    """A shadow call: decided and logged with the would-be manager, then released to the PBX."""
    target = decision.target
    if target is not None:
        would = f"shadow: would transfer to {target.manager} {target.workplace}"
    elif decision.action is Action.WAIT:
        would = "shadow: would wait for the PBX"
    else:
        would = "shadow: would release to the PBX"
    released = attempts[0] if attempts else None
    if released is not None and released.result is Result.APPLIED:
        reasons = (would, "shadow: released to the PBX (terminateCall)")
    elif released is not None and released.result is Result.LATE and not released.started:
        reasons = (would, "shadow: budget spent before the release; the PBX routes after parking")
    else:
        reasons = (would, f"shadow: release failed: {released.message if released else None}")
    return Conclusion(
        Outcome.SHADOW,
        reasons,
        error=released.error if released is not None else None,
        manager=target.manager if target is not None else None,
        workplace=target.workplace if target is not None else None,
        attempts=1 if released is not None and released.started else 0,
        answered=released.answered if released is not None else False,
    )
