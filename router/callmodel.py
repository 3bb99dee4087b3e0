"""The call model: what we infer from MTT's document about a call's life, in one place.

MTT documents each notification but not the whole sequence of a call; docs/CALL_MODEL.md is our
model of it and this module is that page as data. The engine reads calls by it (which ``trying``
is a parked call, which workplace a leg is at, which sequences are surprises: :mod:`router.audit`)
and the simulator plays calls by it (the phases, what each step notifies, how a command on a call
is classified). When real traffic shows otherwise, correct the page and this module: both sides
follow. Pure: no I/O.

Incoming call to a parked external number::

    trying (incoming; caller = client, callee = the external number, forwarderList empty)
      -- nothing for PARKING_WINDOW_S unless transferCall/terminateCall arrives --
    transferCall to workplace W: showing (at W) -> connected -> finished -> recorded
                                 or showing -> hiding, then the PBX routes it by its own settings
    terminateCall, or PARKING_WINDOW_S with no command: the PBX routes it its usual way
                                 (the same showing/connected/hiding/finished for its choice)

makeCall from workplace W: outgoing trying (W rings), showing once W answered (the number is
dialled), connected, finished, recorded.
"""

from __future__ import annotations

import enum
from collections.abc import Collection, Mapping
from types import MappingProxyType
from typing import NamedTuple, Protocol, runtime_checkable

from router.events import CallEvent, CallState, CallType
from router.numbers import try_normalize

PARKING_WINDOW_S = 5.0
"""How long MTT parks a call waiting for our command."""

# -- the phases of a call and what moves it on -------------------------------------------------


class Phase(enum.StrEnum):
    """Where a call is in its life."""

    NEW = "new"
    PARKED = "parked"
    """``trying`` sent; the PBX waits for a command until the parking window ends."""
    ROUTING = "routing"
    """The PBX picks a workplace by its own settings."""
    RINGING = "ringing"
    """``showing``: a workplace rings (for a makeCall: the calling workplace rings)."""
    DIALLING = "dialling"
    """makeCall: the workplace answered, the dialled number rings (``showing``)."""
    CONNECTED = "connected"
    ENDED = "ended"
    """``finished`` sent (``recorded`` may follow)."""
    DONE = "done"
    """Nothing more follows."""


class Step(enum.StrEnum):
    """What happens to a call."""

    PARK = "park"
    """An incoming call to a parked number."""
    PLACE = "place"
    """An incoming call that is not parked, or a makeCall."""
    TRANSFER = "transfer"
    TERMINATE = "terminate"
    WINDOW_OVER = "window_over"
    PICK = "pick"
    """The PBX rings the next workplace of its route."""
    NOBODY = "nobody"
    """The PBX has nobody left to ring."""
    ANSWER = "answer"
    NO_ANSWER = "no_answer"
    """Rang too long, or the workplace is on another call."""
    HANG_UP = "hang_up"
    """Either side hangs up (the simulator's clients never hang up before an answer)."""
    RECORD = "record"
    CLOSE = "close"
    """No recording follows."""


class Transition(NamedTuple):
    """Where a step takes a call and the notifications it sends, in order."""

    to: Phase
    notify: tuple[CallState, ...] = ()


_P, _S, _C = Phase, Step, CallState

INCOMING_FLOW: Mapping[tuple[Phase, Step], Transition] = MappingProxyType(
    {
        (_P.NEW, _S.PARK): Transition(_P.PARKED, (_C.TRYING,)),
        (_P.NEW, _S.PLACE): Transition(_P.ROUTING, (_C.TRYING,)),
        (_P.PARKED, _S.TRANSFER): Transition(_P.RINGING, (_C.SHOWING,)),
        (_P.PARKED, _S.TERMINATE): Transition(_P.ROUTING),
        (_P.PARKED, _S.WINDOW_OVER): Transition(_P.ROUTING),
        (_P.PARKED, _S.HANG_UP): Transition(_P.ENDED, (_C.FINISHED,)),
        (_P.ROUTING, _S.PICK): Transition(_P.RINGING, (_C.SHOWING,)),
        (_P.ROUTING, _S.NOBODY): Transition(_P.ENDED, (_C.FINISHED,)),
        (_P.ROUTING, _S.TRANSFER): Transition(_P.RINGING, (_C.SHOWING,)),
        (_P.ROUTING, _S.TERMINATE): Transition(_P.ROUTING),
        (_P.RINGING, _S.ANSWER): Transition(_P.CONNECTED, (_C.CONNECTED,)),
        (_P.RINGING, _S.NO_ANSWER): Transition(_P.ROUTING, (_C.HIDING,)),
        # The document describes transferCall for unanswered and answered calls alike, and
        # hiding as "the end of the call at a workplace, e.g. when it is transferred on".
        (_P.RINGING, _S.TRANSFER): Transition(_P.RINGING, (_C.HIDING, _C.SHOWING)),
        (_P.RINGING, _S.TERMINATE): Transition(_P.ROUTING, (_C.HIDING,)),
        (_P.RINGING, _S.HANG_UP): Transition(_P.ENDED, (_C.FINISHED,)),
        (_P.CONNECTED, _S.HANG_UP): Transition(_P.ENDED, (_C.FINISHED,)),
        (_P.CONNECTED, _S.TRANSFER): Transition(_P.RINGING, (_C.HIDING, _C.SHOWING)),
        (_P.CONNECTED, _S.TERMINATE): Transition(_P.ENDED, (_C.FINISHED,)),
        (_P.ENDED, _S.RECORD): Transition(_P.DONE, (_C.RECORDED,)),
        (_P.ENDED, _S.CLOSE): Transition(_P.DONE),
    }
)
"""An incoming call: each (phase, step) the model knows, and what follows."""

OUTGOING_FLOW: Mapping[tuple[Phase, Step], Transition] = MappingProxyType(
    {
        (_P.NEW, _S.PLACE): Transition(_P.RINGING, (_C.TRYING,)),
        (_P.RINGING, _S.ANSWER): Transition(_P.DIALLING, (_C.SHOWING,)),
        (_P.RINGING, _S.NO_ANSWER): Transition(_P.ENDED, (_C.FINISHED,)),
        (_P.DIALLING, _S.ANSWER): Transition(_P.CONNECTED, (_C.CONNECTED,)),
        (_P.CONNECTED, _S.HANG_UP): Transition(_P.ENDED, (_C.FINISHED,)),
        (_P.RINGING, _S.TERMINATE): Transition(_P.ENDED, (_C.FINISHED,)),
        (_P.DIALLING, _S.TERMINATE): Transition(_P.ENDED, (_C.FINISHED,)),
        (_P.CONNECTED, _S.TERMINATE): Transition(_P.ENDED, (_C.FINISHED,)),
        (_P.ENDED, _S.RECORD): Transition(_P.DONE, (_C.RECORDED,)),
        (_P.ENDED, _S.CLOSE): Transition(_P.DONE),
    }
)
"""A makeCall (the document shows transferCall only for incoming calls: not modelled here)."""


def transition(phase: Phase, step: Step, *, outgoing: bool = False) -> Transition | None:
    """What ``step`` does to a call in ``phase``; ``None`` when the model has no such step."""
    return (OUTGOING_FLOW if outgoing else INCOMING_FLOW).get((phase, step))


# -- which trying is a parked call -------------------------------------------------------------


def is_parked_trying(
    event: CallEvent,
    external_numbers: Collection[str] | None,
    park_named: Collection[str] = (),
) -> bool:
    """True when ``event`` is a parked call waiting for our decision.

    Incoming ``trying`` whose callee is one of the account's external numbers (normalised) and
    whose legs carry no forwarders. While the number list is unknown (``None``: not fetched, or an
    answer we could not read in full) only the numbers ``routing.park`` names count
    (``park_named``, normalised): never guess, a command on a call that was not parked may act on
    a live call.
    """
    if event.state is not CallState.TRYING or event.type is not CallType.INCOMING:
        return False
    if event.forwarded:
        return False
    numbers = park_named if external_numbers is None else external_numbers
    if not numbers:
        return False
    callee = try_normalize(event.callee.number)
    return callee is not None and callee in numbers


# -- which workplace a leg is at ---------------------------------------------------------------


@runtime_checkable
class PbxView(Protocol):
    """What the model needs to know of the PBX (:class:`router.directory.Directory`)."""

    @property
    def workplace_ids(self) -> frozenset[str] | None:
        """The workplaces MTT lists; ``None`` before the first fetch."""
        ...

    @property
    def terminal_workplaces(self) -> Mapping[str, str]:
        """Terminal SIP ID -> its workplace (``terminalsInfo``)."""
        ...

    @property
    def park_named(self) -> frozenset[str]:
        """The numbers ``routing.park`` names, normalised (empty for ``all``)."""
        ...


def pbx_view(directory: object) -> PbxView | None:
    """``directory`` when it can answer :class:`PbxView` (checked once, not per notification)."""
    return directory if isinstance(directory, PbxView) else None


AT_WORKPLACE = frozenset({CallState.SHOWING, CallState.CONNECTED, CallState.HIDING})
"""States in which a leg is at a workplace (``finished`` may be at none: nobody answered)."""

BUSY_STATES = frozenset({CallState.CONNECTED})
"""States in which the workplace of the leg is on a call."""

FREE_STATES = frozenset({CallState.FINISHED, CallState.HIDING})
"""States after which that workplace is free again."""

WORKPLACE_STATES = AT_WORKPLACE | FREE_STATES
"""States whose workplace the engine looks up."""


def workplace_of(event: CallEvent, pbx: PbxView | None = None) -> str | None:
    """The workplace (SIP ID) on the PBX side of the leg, or ``None`` when it is none of ours.

    The PBX side is the callee of an incoming leg and the caller of an outgoing one. The document
    defines ``id`` as the PBX SIP ID (if any) and ``accountId`` as the *terminal's* account, and a
    workplace may have several terminals: so ``id`` when it is a known workplace, else
    ``accountId`` mapped through ``terminalsInfo``, else ``accountId`` when it is a known
    workplace. Without a ``pbx`` nothing is known: the account as sent (``accountId``, else
    ``id``).
    """
    party = event.caller if event.type is CallType.OUTGOING else event.callee
    if pbx is None:
        return party.account_id or party.id
    known = pbx.workplace_ids
    if not known:
        return None
    if party.id is not None and party.id in known:
        return party.id
    account = party.account_id
    if account is None:
        return None
    mapped = pbx.terminal_workplaces.get(account)
    if mapped is not None and mapped in known:
        return mapped
    return account if account in known else None


def busy_workplace(event: CallEvent, pbx: PbxView | None = None) -> str | None:
    """The workplace this event says is now on a call (``connected``)."""
    return workplace_of(event, pbx) if event.state in BUSY_STATES else None


def freed_workplace(event: CallEvent, pbx: PbxView | None = None) -> str | None:
    """The workplace this event says is free again (``finished``/``hiding``)."""
    return workplace_of(event, pbx) if event.state in FREE_STATES else None


# -- commands on a call, as MTT would see them -------------------------------------------------


class CommandClass(enum.StrEnum):
    """What a transferCall/terminateCall on a call amounts to."""

    FINE = "fine"
    REROUTE = "reroute"
    """A deliberate second transfer of a call still ringing unanswered where we sent it."""
    VIOLATION = "violation"
    """A command that may act on a live call: the daemon must never send one."""


class CommandReason(enum.StrEnum):
    """Why a command is classified as it is (the class follows from the reason)."""

    PARKED = "parked"
    """Parked, inside its window, no earlier command that may have been applied."""
    REROUTE = "reroute"
    AFTER_WINDOW = "after_window"
    """The call was parked and its window ended with no command: the PBX routed it."""
    AFTER_AMBIGUOUS = "after_ambiguous"
    """An earlier command on the call may have been applied (a 5xx or no answer)."""
    PBX_ROUTING = "pbx_routing"
    PBX_RINGING = "pbx_ringing"
    """Ringing where the PBX sent it: after a terminateCall, a no-answer, or never parked."""
    ANSWERED = "answered"
    ENDED = "ended"
    OUTGOING = "outgoing"
    """A makeCall leg: never parked."""
    NOT_ANNOUNCED = "not_announced"

    @property
    def verdict(self) -> CommandClass:
        """The class this reason puts a command in."""
        if self is CommandReason.PARKED:
            return CommandClass.FINE
        if self is CommandReason.REROUTE:
            return CommandClass.REROUTE
        return CommandClass.VIOLATION


class CommandContext(NamedTuple):
    """What classifying a command looks at."""

    phase: Phase
    outgoing: bool = False
    waiting: bool = False
    """Parked, and no command has ended its parking yet."""
    window_over: bool = False
    sent_here: bool = False
    """Ringing unanswered at the workplace a fine transfer of ours named."""
    let_go: bool = False
    """That workplace let the call go unanswered (``hiding``) and nobody answered it since: the
    PBX goes on with it (rules ``no_answer`` moves such a call on at once)."""
    maybe_applied: bool = False
    """An earlier command on this call may have been applied."""


_BY_PHASE = {
    Phase.NEW: CommandReason.NOT_ANNOUNCED,
    Phase.PARKED: CommandReason.PARKED,
    Phase.ROUTING: CommandReason.PBX_ROUTING,
    Phase.RINGING: CommandReason.PBX_RINGING,
    Phase.DIALLING: CommandReason.OUTGOING,
    Phase.CONNECTED: CommandReason.ANSWERED,
    Phase.ENDED: CommandReason.ENDED,
    Phase.DONE: CommandReason.ENDED,
}


def classify_command(ctx: CommandContext) -> CommandReason:
    """Why a transferCall/terminateCall on a call in ``ctx`` is fine, a re-route or a violation.

    Fine: a parked call inside its window. Re-route: a call still ringing unanswered at a workplace
    the daemon transferred it to, or that such a workplace let go unanswered and the PBX has
    (ringing or routing, nobody answered). Anything else may act on a live call: a violation.
    """
    if ctx.outgoing:
        return CommandReason.OUTGOING
    if ctx.waiting:
        if ctx.window_over:
            return CommandReason.AFTER_WINDOW
        if ctx.maybe_applied:
            return CommandReason.AFTER_AMBIGUOUS
        return CommandReason.PARKED
    if ctx.phase is Phase.RINGING and ctx.sent_here:
        return CommandReason.REROUTE
    if ctx.let_go and (ctx.phase is Phase.RINGING or ctx.phase is Phase.ROUTING):
        return CommandReason.REROUTE
    reason = _BY_PHASE[ctx.phase]
    # A parked call whose parking a command ended is no longer "parked" for a second command.
    return CommandReason.PBX_ROUTING if reason is CommandReason.PARKED else reason


# -- the notification sequences the model expects ----------------------------------------------


def _expected_after(
    flow: Mapping[tuple[Phase, Step], Transition],
) -> dict[CallState | None, set[CallState]]:
    """For each notified state (``None``: nothing yet), the states ``flow`` lets come next."""
    # last[p]: the states after which a call can be in phase p (silent steps pass them on).
    last: dict[Phase, set[CallState | None]] = {Phase.NEW: {None}}
    changed = True
    while changed:
        changed = False
        for (phase, _), step in flow.items():
            into = {step.notify[-1]} if step.notify else last.get(phase, set())
            target = last.setdefault(step.to, set())
            if not into <= target:
                target |= into
                changed = True
    after: dict[CallState | None, set[CallState]] = {}
    for (phase, _), step in flow.items():
        for state in last.get(phase, ()) if step.notify else ():
            after.setdefault(state, set()).add(step.notify[0])
        for first, second in zip(step.notify, step.notify[1:], strict=False):
            after.setdefault(first, set()).add(second)
    return after


EXPECTED_AFTER: Mapping[CallState | None, frozenset[CallState]] = MappingProxyType(
    {
        state: frozenset(
            nxt
            for flow in (INCOMING_FLOW, OUTGOING_FLOW)
            for nxt in _expected_after(flow).get(state, ())
        )
        for state in (None, *CallState)
    }
)
"""State -> the states the model lets follow it (``None``: a call's first notification)."""
