"""Notification payloads exactly as MTT's document shows them, quirks included.

The quirks are deliberate: the client side of an incoming call has ``accountId`` ending in
``@pstn`` and no ``centrexId``; the PBX side has ``displayName: ""``, and at a workplace its
``id`` is the workplace's SIP ID and its ``accountId`` the terminal's (the document's table);
``finished`` has no ``startTime`` but ``reasonCode: null``; ``recorded`` has no ``tag`` and
carries ``accountId`` at the top of ``callInfo``; a makeCall callee is ``+7...`` while ringing,
``7...`` once connected.
"""

from __future__ import annotations

import random
import string
import time
from datetime import datetime, timedelta, timezone
from functools import lru_cache
from typing import Literal, NotRequired, TypedDict

from router.events import CallRefWire, PartyWire
from router.numbers import try_normalize
from router.simulator.records import SimCall

MOSCOW = timezone(timedelta(hours=3), "MSK")
"""MTT stamps ``startTime`` in Moscow time, with no zone in the string."""


class CallInfoWire(TypedDict, total=False):
    """``result.callInfo`` of a ``callNotifications`` event."""

    accountId: str
    call: CallRefWire
    callee: PartyWire
    caller: PartyWire
    duration: int
    reason: str
    reasonCode: None
    startTime: str
    state: str
    transportId: str
    type: str
    urlRecord: str


class CallResultWire(TypedDict):
    """``result`` of a ``callNotifications`` event."""

    callInfo: CallInfoWire


class CallNotificationWire(TypedDict):
    """A ``callNotifications`` webhook body."""

    event: Literal["callNotifications"]
    result: CallResultWire


class VpbxResultWire(TypedDict):
    """``result`` of a ``vpbxNotifications`` event."""

    eventType: str


class VpbxNotificationWire(TypedDict):
    """A ``vpbxNotifications`` webhook body."""

    event: Literal["vpbxNotifications"]
    result: VpbxResultWire


NotificationWire = CallNotificationWire | VpbxNotificationWire


class ErrorWire(TypedDict):
    """The ``error`` object of an API error answer (JSON-RPC style, like ``params``/``result``)."""

    code: int
    message: str


class ApiErrorWire(TypedDict):
    """Body of every non-2xx API answer."""

    error: ErrorWire


class CallCommandParams(TypedDict):
    """``params`` of terminateCall/transferCall as the document shows them."""

    call: CallRefWire
    transportId: str
    calleeId: NotRequired[str]


def start_time(epoch_s: float | None = None) -> str:
    """``YYYY-MM-DD HH:MM:SS`` in Moscow time, the document's ``startTime`` format."""
    return _stamp(int(time.time() if epoch_s is None else epoch_s))


@lru_cache(maxsize=4)
def _stamp(epoch_s: int) -> str:
    # Cached: at hundreds of calls a second most calls share their second.
    return datetime.fromtimestamp(epoch_s, MOSCOW).strftime("%Y-%m-%d %H:%M:%S")


class IdMaker:
    """Call ids, tags and transport ids shaped like the document's, from one seeded RNG."""

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        self._serial = 0

    def _pick(self, alphabet: str, n: int) -> str:
        return "".join(self._rng.choices(alphabet, k=n))

    def incoming(self) -> tuple[str, str]:
        """(id, tag) like ``c166e238..._00015ED635780FC7~1o`` / ``hswdfry52vmykfla____.o``."""
        self._serial += 1
        bits = self._rng.getrandbits
        return f"{bits(128):032x}_{self._serial:016X}~1o", f"{bits(64):016x}____.o"

    def outgoing(self) -> tuple[str, str]:
        """(id, tag) like ``SDfe2n901-b5107516...@127.0.0.1`` / ``sdfe2n901-281028329``."""
        self._serial += 1
        prefix = self._pick(string.ascii_lowercase + string.digits, 7)
        ident = f"SD{prefix}-{self._rng.getrandbits(128):032x}{self._serial}@127.0.0.1"
        return ident, f"sd{prefix}-{self._rng.randrange(10**8, 10**9)}"

    def transport(self, port: int = 5073) -> str:
        """``10.133.x.x:port``: MTT's internal SIP proxy the command must go back to."""
        return f"10.133.{self._rng.randrange(1, 255)}.{self._rng.randrange(1, 255)}:{port}"

    def token(self) -> str:
        """An opaque token or code in the document's style (upper-case letters and digits)."""
        return self._pick(string.ascii_uppercase + string.digits, 48)


def client_party(number: str, forwarders: list[str] | None = None) -> PartyWire:
    """The outside caller of an incoming call: ``accountId`` with ``@pstn``, no ``centrexId``."""
    return {
        "accountId": f"{number}@pstn",
        "displayId": number,
        "forwarderList": list(forwarders or []),
        "id": number,
    }


def pbx_party(
    number: str,
    centrex_id: str,
    forwarders: list[str] | None = None,
    *,
    sip_id: str | None = None,
    account: str | None = None,
) -> PartyWire:
    """The PBX side: the external number (the parked leg), or a workplace's ``sip_id`` reached
    on the terminal ``account``."""
    return {
        "accountId": account or number,
        "centrexId": centrex_id,
        "displayId": number,
        "displayName": "",
        "forwarderList": list(forwarders or []),
        "id": sip_id or number,
    }


def workplace_caller(number: str, terminal: str, centrex_id: str) -> PartyWire:
    """The caller of a makeCall leg: the workplace's terminal, showing the company's number."""
    return {
        "accountId": terminal,
        "centrexId": centrex_id,
        "displayId": number,
        "forwarderList": [],
        "id": number,
    }


def dialled_party(number: str) -> PartyWire:
    """The callee of a makeCall leg: no ``accountId`` (it is outside the PBX)."""
    return {"displayId": number, "forwarderList": [], "id": number}


def call_notification(info: CallInfoWire) -> CallNotificationWire:
    """Wrap ``callInfo`` in the envelope."""
    return {"event": "callNotifications", "result": {"callInfo": info}}


def vpbx_notification(event_type: str) -> VpbxNotificationWire:
    """``numbersChanged`` / ``workplacesChanged``."""
    return {"event": "vpbxNotifications", "result": {"eventType": event_type}}


def recorded_info(call_id: str, account: str, url: str) -> CallInfoWire:
    """The document's ``recorded`` shape: no tag, no type, ``accountId`` (the terminal) on top."""
    return {"accountId": account, "call": {"id": call_id}, "state": "recorded", "urlRecord": url}


def incoming_info(
    call: SimCall,
    state: str,
    centrex_id: str,
    *,
    sip_id: str | None = None,
    terminal: str | None = None,
    start: str = "",
    timing: bool = True,
) -> CallInfoWire:
    """``callInfo`` of an incoming leg: at the external number, or at a workplace (``sip_id``)
    on one of its terminals.

    ``timing=False`` leaves ``startTime`` out, as the document's ``finished`` does.
    """
    callee = pbx_party(
        call.callee, centrex_id, list(call.forwarders), sip_id=sip_id, account=terminal
    )
    info: CallInfoWire = {
        "call": {"id": call.id, "tag": call.tag},
        "callee": callee,
        "caller": client_party(call.caller),
    }
    if timing:
        info["startTime"] = start or call.start_time
    info.update({"state": state, "transportId": call.transport_id, "type": "incoming"})
    return info


def outgoing_info(
    call: SimCall,
    state: str,
    shown_as: str,
    terminal: str,
    centrex_id: str,
    *,
    plus: bool,
    start: str = "",
    timing: bool = True,
) -> CallInfoWire:
    """``callInfo`` of a makeCall leg: the workplace calls out from ``terminal`` showing the
    number ``shown_as``."""
    digits = try_normalize(call.callee)
    # The document shows the dialled number as +7... while ringing and 7... once connected.
    dialled = call.callee if digits is None else f"+{digits}" if plus else digits
    info: CallInfoWire = {
        "call": {"id": call.id, "tag": call.tag},
        "callee": dialled_party(dialled),
        "caller": workplace_caller(shown_as, terminal, centrex_id),
    }
    if timing:
        info["startTime"] = start or call.start_time
    info.update({"state": state, "transportId": call.transport_id, "type": "outgoing"})
    return info


def ended(info: CallInfoWire, duration_s: int, reason: str) -> CallInfoWire:
    """Add the ``finished`` fields, ``reasonCode`` null as in the document."""
    info.update({"duration": duration_s, "reason": reason, "reasonCode": None})
    return info
