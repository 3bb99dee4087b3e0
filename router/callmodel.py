"""The call lifecycle as we infer it from MTT's document: what the engine reads calls by.

MTT documents each notification but not the whole sequence of a call; docs/CALL_MODEL.md is our
model of it. The engine reads calls through this module; the simulator plays them by the same
page in :mod:`router.simulator.calls` (it takes only :data:`PARKING_WINDOW_S` from here). When real
traffic shows otherwise, correct the page, this module and the simulator together.

Incoming call to a parked external number::

    trying (incoming; caller = client, callee = the external number, forwarderList empty)
      -- nothing for PARKING_WINDOW_S unless transferCall/terminateCall arrives --
    after transferCall to workplace W (same call id):
      showing (callee.accountId = W) -> connected -> finished (duration, reason) -> recorded
      or, if W does not answer: showing -> hiding, then the PBX continues by W's own settings
    after terminateCall, or PARKING_WINDOW_S with no command:
      the PBX routes the call its usual way; the same sequence follows for the workplace it chose

makeCall from workplace W to number N: outgoing trying (caller = W), then showing/connected/
finished for the second leg.
"""

from __future__ import annotations

from collections.abc import Collection

from router.events import CallEvent, CallState, CallType
from router.numbers import try_normalize

PARKING_WINDOW_S = 5.0
"""How long MTT parks a call waiting for our command."""

BUSY_STATES = frozenset({CallState.CONNECTED})
"""States in which the workplace on the ``callee`` side is on a call."""

FREE_STATES = frozenset({CallState.FINISHED, CallState.HIDING})
"""States after which that workplace is free again."""


def is_parked_trying(event: CallEvent, external_numbers: Collection[str] | None) -> bool:
    """True when ``event`` is a parked call waiting for our decision.

    Incoming ``trying`` whose callee is one of the account's external numbers (normalised) and
    whose legs carry no forwarders. While the number list is unknown (``None``: MTT unreachable at
    start-up), every incoming ``trying`` with no forwarders counts as parked.
    """
    if event.state is not CallState.TRYING or event.type is not CallType.INCOMING:
        return False
    if event.forwarded:
        return False
    if external_numbers is None:
        return True
    callee = try_normalize(event.callee.number)
    return callee is not None and callee in external_numbers


def busy_workplace(event: CallEvent) -> str | None:
    """The workplace this event says is now on a call (callee of a ``connected`` leg)."""
    if event.state in BUSY_STATES:
        return workplace_of(event)
    return None


def freed_workplace(event: CallEvent) -> str | None:
    """The workplace this event says is free again (``finished``/``hiding``)."""
    if event.state in FREE_STATES:
        return workplace_of(event)
    return None


def workplace_of(event: CallEvent) -> str | None:
    """The workplace (SIP ID) on the PBX side of the leg.

    For an incoming leg it is the callee (``accountId`` is the workplace per the document's
    ``showing`` notes); for an outgoing leg (makeCall) it is the caller's ``accountId``.
    """
    party = event.callee if event.type is not CallType.OUTGOING else event.caller
    return party.account_id or party.id
