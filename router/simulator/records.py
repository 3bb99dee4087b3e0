"""What the simulator remembers: each call (live state and history) and each request it received.

Times come in pairs: ``*_at`` is ``time.monotonic()`` (the event loop's clock, for latencies) and
``*_at_wall`` is ``time.time()`` (for humans and cross-process logs).
"""

from __future__ import annotations

import asyncio
import enum
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from router.callmodel import CommandClass, CommandReason, Phase


class CallOutcome(enum.StrEnum):
    """What became of a call's parking (or why there was none)."""

    TRANSFERRED = "transferred"
    """transferCall arrived inside the window."""
    TERMINATED = "terminated"
    """terminateCall arrived inside the window: released to the PBX at once."""
    PBX_TIMEOUT = "pbx_timeout"
    """No command inside the window: the PBX routed it (a late command is in ``refused``)."""
    NOT_PARKED = "not_parked"
    """The number was not on parking: the PBX routed it at once."""
    FORWARDED = "forwarded"
    """A forwarded leg (non-empty ``forwarderList``): never parked, the PBX routed it."""
    OUTGOING = "outgoing"
    """A makeCall."""


class Refusal(enum.StrEnum):
    """Why a transferCall/terminateCall was not carried out (its HTTP answer was not 2xx)."""

    UNKNOWN_CALL = "unknown_call"
    """404: no call with this id (never announced, or forgotten from the log)."""
    GONE = "gone"
    """404: the call is over; MTT has nothing left to act on."""
    BAD_PARAMS = "bad_params"
    FAULT = "fault"
    """A fault knob answered instead (a 5xx or a dropped connection may have been applied)."""


CallPhase = Phase
"""The phases of :mod:`router.callmodel` (kept under the simulator's older name)."""


@dataclass(slots=True)
class CommandRecord:
    """One transferCall/terminateCall the simulator received for a call, and its class."""

    kind: str
    """``transfer`` or ``terminate``."""
    received_at: float
    received_at_wall: float
    workplace: str | None = None
    accepted: bool = False
    """Carried out (answered 2xx)."""
    refusal: Refusal | None = None
    status: int = 200
    reason: CommandReason | None = None
    """Why it is fine, a re-route or a violation (:func:`router.callmodel.classify_command`)."""

    @property
    def verdict(self) -> CommandClass | None:
        """fine, reroute or violation."""
        return None if self.reason is None else self.reason.verdict

    def to_json(self) -> dict[str, Any]:
        """Plain JSON for ``/_sim/calls``."""
        return {
            "kind": self.kind,
            "workplace": self.workplace,
            "received_at": self.received_at,
            "received_at_wall": self.received_at_wall,
            "accepted": self.accepted,
            "refusal": None if self.refusal is None else str(self.refusal),
            "status": self.status,
            "class": None if self.verdict is None else str(self.verdict),
            "reason": None if self.reason is None else str(self.reason),
        }


class Violation(NamedTuple):
    """A command that may have acted on a live call: the daemon must never send one."""

    call_id: str
    kind: str
    reason: CommandReason
    workplace: str | None
    received_at_wall: float

    def to_json(self) -> dict[str, Any]:
        """Plain JSON for ``/_sim/violations``."""
        return {
            "call_id": self.call_id,
            "kind": self.kind,
            "reason": str(self.reason),
            "workplace": self.workplace,
            "received_at_wall": self.received_at_wall,
        }


@dataclass(slots=True)
class NotificationRecord:
    """One webhook POST: what was sent, when, and what the receiver answered."""

    state: str
    sent_at: float
    sent_at_wall: float
    payload: Mapping[str, Any]
    status: int | None = None
    """The receiver's HTTP status; ``None`` until answered, or when it failed (see ``error``)."""
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        """Plain JSON for ``/_sim/calls``."""
        return {
            "state": self.state,
            "sent_at": self.sent_at,
            "sent_at_wall": self.sent_at_wall,
            "status": self.status,
            "error": self.error,
            "payload": self.payload,
        }


@dataclass(eq=False, slots=True)
class SimCall:
    """A simulated call: its identity, what happened to it and when, and ways to await that."""

    id: str
    tag: str
    transport_id: str
    type: str
    """``incoming`` or ``outgoing`` (makeCall)."""
    caller: str
    callee: str
    """The external number called (incoming) or the dialled number (outgoing)."""
    placed_at: float
    placed_at_wall: float
    start_time: str
    talk_ms: float
    answer: Mapping[str, float | None] = field(default_factory=dict)
    """Per-call answer behaviour by workplace (``None``: never answers)."""
    forwarders: tuple[str, ...] = ()
    parked: bool = False
    phase: Phase = Phase.NEW
    trying_sent_at: float | None = None
    trying_sent_at_wall: float | None = None
    deadline: float | None = None
    """``trying_sent_at + parking window``: commands at or after it are late."""
    command: CommandRecord | None = None
    """The command that ended the parking, if any."""
    commands: list[CommandRecord] = field(default_factory=list)
    """Every command received for the call, in order, each classified."""
    outcome: CallOutcome | None = None
    outcome_at: float | None = None
    tried: list[str] = field(default_factory=list)
    """Workplaces rung, in order."""
    at: str | None = None
    """The workplace the call rings or talks at now."""
    sent_to: str | None = None
    """The workplace a fine transfer (or re-route) of the daemon named last."""
    let_go: str | None = None
    """The last workplace of :attr:`sent_to` that let the call go unanswered (``hiding``)."""
    maybe_applied: bool = False
    """A command for the call was answered 5xx or not at all: it may have been applied."""
    workplace: str | None = None
    """The workplace that answered (``None``: nobody did)."""
    terminal: str | None = None
    """The terminal it answered on."""
    connected_at: float | None = None
    engaged: str | None = None
    """The workplace this call keeps on a call (for the PBX's "busy")."""
    done_at: float | None = None
    notifications: list[NotificationRecord] = field(default_factory=list)
    timer: asyncio.TimerHandle | None = field(default=None, repr=False)
    epoch: int = field(default=0, repr=False)
    """Bumped on every step: continuations of an earlier step see it and stand down."""
    in_flight: bool = field(default=False, repr=False)
    outbox: deque[tuple[Any, Callable[[], None] | None, int]] = field(
        default_factory=deque, repr=False
    )
    """Notifications waiting for the one in flight: a call's notifications go out in order."""
    trying_done: asyncio.Event = field(default_factory=asyncio.Event, repr=False)
    outcome_known: asyncio.Event = field(default_factory=asyncio.Event, repr=False)
    finished: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    @property
    def refused(self) -> list[CommandRecord]:
        """The commands not carried out."""
        return [c for c in self.commands if c.refusal is not None]

    @property
    def violations(self) -> list[CommandRecord]:
        """The commands that may have acted on a live call."""
        return [c for c in self.commands if c.verdict is CommandClass.VIOLATION]

    @property
    def first_command(self) -> CommandRecord | None:
        """The first transfer/terminate received, carried out or not."""
        return self.commands[0] if self.commands else None

    @property
    def decision_latency_s(self) -> float | None:
        """From sending ``trying`` to receiving the first command, as MTT would measure it."""
        first = self.first_command
        if first is None or self.trying_sent_at is None:
            return None
        return first.received_at - self.trying_sent_at

    @property
    def late(self) -> bool:
        """True when a command arrived after the window (the PBX had routed the call)."""
        return any(c.reason is CommandReason.AFTER_WINDOW for c in self.commands)

    @property
    def states(self) -> list[str]:
        """The states notified so far, in order (duplicates included)."""
        return [n.state for n in self.notifications]

    async def wait_trying(self) -> SimCall:
        """Until the ``trying`` POST has been answered (or failed, or the simulator stopped)."""
        await self.trying_done.wait()
        return self

    async def wait_outcome(self) -> CallOutcome:
        """Until the parking is resolved: transferred, terminated, timed out, or never parked.

        Raises ``RuntimeError`` if the simulator stopped first.
        """
        await self.outcome_known.wait()
        if self.outcome is None:
            raise RuntimeError(f"the simulator stopped before call {self.id} had an outcome")
        return self.outcome

    async def wait_done(self) -> SimCall:
        """Until the last notification of the call was answered (or the simulator stopped)."""
        await self.finished.wait()
        return self

    def to_json(self) -> dict[str, Any]:
        """The record served at ``/_sim/calls/{id}``."""
        return {
            "id": self.id,
            "tag": self.tag,
            "transport_id": self.transport_id,
            "type": self.type,
            "caller": self.caller,
            "callee": self.callee,
            "forwarders": list(self.forwarders),
            "parked": self.parked,
            # "done" once every notification went out (recorded too), as the records always said.
            "phase": "done" if self.done_at is not None else str(self.phase),
            "placed_at": self.placed_at,
            "placed_at_wall": self.placed_at_wall,
            "start_time": self.start_time,
            "trying_sent_at": self.trying_sent_at,
            "trying_sent_at_wall": self.trying_sent_at_wall,
            "deadline": self.deadline,
            "command": None if self.command is None else self.command.to_json(),
            "commands": [c.to_json() for c in self.commands],
            "refused": [c.to_json() for c in self.refused],
            "violations": [c.to_json() for c in self.violations],
            "outcome": None if self.outcome is None else str(self.outcome),
            "outcome_at": self.outcome_at,
            "late": self.late,
            "decision_latency_s": self.decision_latency_s,
            "tried": list(self.tried),
            "at": self.at,
            "workplace": self.workplace,
            "terminal": self.terminal,
            "done_at": self.done_at,
            "states": self.states,
            "notifications": [n.to_json() for n in self.notifications],
        }


@dataclass(slots=True)
class RequestRecord:
    """One request to the OAuth or API endpoints, as received, and the status answered."""

    method: str
    path: str
    endpoint: str
    query: dict[str, str]
    body: Any
    """Decoded JSON, or the form for ``/oauth/token``; raw text when neither decodes."""
    auth: bool
    """Whether an ``Authorization`` header was present."""
    received_at: float
    received_at_wall: float
    status: int = 0
    """The status answered; 0 when the connection was dropped on purpose."""

    def to_json(self) -> dict[str, Any]:
        """Plain JSON for ``/_sim/requests``."""
        return {
            "method": self.method,
            "path": self.path,
            "endpoint": self.endpoint,
            "query": self.query,
            "body": self.body,
            "auth": self.auth,
            "received_at": self.received_at,
            "received_at_wall": self.received_at_wall,
            "status": self.status,
        }
