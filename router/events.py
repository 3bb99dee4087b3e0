"""MTT notifications: from wire JSON to typed, frozen values.

MTT's examples disagree with each other (``accountId`` with a ``@pstn`` suffix, a ``recorded``
event with no ``tag`` and with ``accountId`` at the top of ``callInfo``, ``reasonCode: null``), so
every field but ``event`` and, for calls, ``call.id`` and ``state`` is optional here.

Wrong *shape* (not an object, no ``event``, a ``callNotifications`` with no ``callInfo.call.id``)
raises :class:`EventShapeError`; unknown events or states are *not* errors: they parse into
:class:`UnknownEvent` or a :class:`CallEvent` whose ``state`` is ``CallState.UNKNOWN``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, NotRequired, TypedDict

from router.errors import EventShapeError


class CallState(enum.StrEnum):
    """``callInfo.state`` values the document names."""

    TRYING = "trying"
    SHOWING = "showing"
    CONNECTED = "connected"
    HIDING = "hiding"
    FINISHED = "finished"
    RECORDED = "recorded"
    UNKNOWN = "unknown"


class CallType(enum.StrEnum):
    """``callInfo.type``."""

    INCOMING = "incoming"
    OUTGOING = "outgoing"
    UNKNOWN = "unknown"


class VpbxEventType(enum.StrEnum):
    """``vpbxNotifications`` ``eventType`` values."""

    NUMBERS_CHANGED = "numbersChanged"
    WORKPLACES_CHANGED = "workplacesChanged"
    UNKNOWN = "unknown"


class PartyWire(TypedDict, total=False):
    """``callInfo.caller`` / ``callInfo.callee`` as MTT sends it."""

    accountId: str
    centrexId: str
    displayId: str
    displayName: str
    forwarderList: list[str]
    id: str


class CallRefWire(TypedDict):
    """``callInfo.call``: the leg's id, and a tag (absent in ``recorded``)."""

    id: str
    tag: NotRequired[str]


@dataclass(frozen=True, slots=True)
class CallRef:
    """Identifies one call leg for terminateCall/transferCall."""

    id: str
    tag: str | None = None

    def wire(self) -> CallRefWire:
        """The ``call`` object of a terminateCall/transferCall request."""
        ref: CallRefWire = {"id": self.id}
        if self.tag is not None:
            ref["tag"] = self.tag
        return ref


@dataclass(frozen=True, slots=True)
class Party:
    """One side of a call (``caller`` or ``callee``)."""

    id: str | None = None
    account_id: str | None = None
    centrex_id: str | None = None
    display_id: str | None = None
    display_name: str | None = None
    forwarders: tuple[str, ...] = ()

    @property
    def number(self) -> str | None:
        """The best available number or SIP ID for this party (``id``, then display, account)."""
        return self.id or self.display_id or self.account_id


@dataclass(frozen=True, slots=True)
class CallEvent:
    """A ``callNotifications`` event."""

    call: CallRef
    state: CallState
    type: CallType
    caller: Party
    callee: Party
    transport_id: str | None = None
    start_time: str | None = None
    duration_s: int | None = None
    reason: str | None = None
    reason_code: str | None = None
    url_record: str | None = None
    account_id: str | None = None
    raw_state: str = ""

    @property
    def labels(self) -> tuple[str, str]:
        """``notifications_total{event,state}``."""
        return ("callNotifications", self.state.value)

    def for_another_account(self, centrex_id: str) -> bool:
        """True when some party carries a ``centrexId`` but none carries ``centrex_id`` (ours).

        A notification with no ``centrexId`` at all is not refused: the document's examples do not
        always carry one.
        """
        ids = {p.centrex_id for p in (self.caller, self.callee) if p.centrex_id}
        return bool(ids) and centrex_id not in ids

    @property
    def forwarded(self) -> bool:
        """True when the leg already went through forwarding (either side has forwarders)."""
        return bool(self.caller.forwarders or self.callee.forwarders)


@dataclass(frozen=True, slots=True)
class VpbxEvent:
    """A ``vpbxNotifications`` event: the PBX's numbers or workplaces changed."""

    type: VpbxEventType
    raw_type: str

    @property
    def labels(self) -> tuple[str, str]:
        """``notifications_total{event,state}``."""
        return ("vpbxNotifications", self.type.value)


@dataclass(frozen=True, slots=True)
class UnknownEvent:
    """An event name we do not know; counted and ignored."""

    name: str

    @property
    def labels(self) -> tuple[str, str]:
        """``notifications_total{event,state}``: one series for every unknown name (bounded)."""
        return ("unknown", "")


Event = CallEvent | VpbxEvent | UnknownEvent


def _opt_str(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return None


def _str(data: dict[str, Any], key: str) -> str | None:
    # The hot path: nearly every field on the wire is a string or absent.
    value = data.get(key)
    return value if type(value) is str else _opt_str(value)


MAX_ID_CHARS = 256
"""Ids, tags, numbers, SIP IDs: MTT's are under 100 characters; anything longer is refused (400),
so no per-call map is keyed by an attacker's megabyte."""
MAX_TEXT_CHARS = 1024
"""Names, reasons, the record URL."""
MAX_FORWARDERS = 32


def _short(data: dict[str, Any], key: str, where: str, limit: int = MAX_ID_CHARS) -> str | None:
    value = _str(data, key)
    if value is not None and len(value) > limit:
        raise EventShapeError(f"{where}.{key} is longer than {limit} characters")
    return value


def _forwarder(entry: Any) -> str:
    """One ``forwarderList`` entry as text, cut just past the limit (the caller refuses it)."""
    if isinstance(entry, dict | list):
        # Not what MTT sends; kept (the leg was forwarded) as its kind only: str() of an entry
        # nested a thousand levels deep recursed past Python's limit (a 500; tests/test_fuzz.py).
        return "object" if isinstance(entry, dict) else "list"
    return str(entry)[: MAX_ID_CHARS + 1]


def _party(value: Any, where: str) -> Party:
    if value is None:
        return Party()
    if not isinstance(value, dict):
        raise EventShapeError(f"{where} must be an object")
    forwarders = value.get("forwarderList") or ()
    if forwarders:
        if not isinstance(forwarders, list):
            raise EventShapeError(f"{where}.forwarderList must be a list")
        if len(forwarders) > MAX_FORWARDERS:
            raise EventShapeError(f"{where}.forwarderList has over {MAX_FORWARDERS} entries")
        forwarders = tuple(_forwarder(f) for f in forwarders if f is not None)
        if any(len(f) > MAX_ID_CHARS for f in forwarders):
            raise EventShapeError(
                f"{where}.forwarderList has an entry over {MAX_ID_CHARS} characters"
            )
    return Party(
        _short(value, "id", where),
        _short(value, "accountId", where),
        _short(value, "centrexId", where),
        _short(value, "displayId", where),
        _short(value, "displayName", where, MAX_TEXT_CHARS),
        forwarders,
    )


_STATES = {s.value: s for s in CallState}
_TYPES = {t.value: t for t in CallType}


def _enum(table: dict[str, Any], unknown: Any, raw: Any) -> Any:
    if type(raw) is not str:
        return unknown
    found = table.get(raw)
    return found if found is not None else table.get(raw.lower(), unknown)


def parse_call_info(info: Any) -> CallEvent:
    """Parse a ``callInfo`` object."""
    if not isinstance(info, dict):
        raise EventShapeError("result.callInfo must be an object")
    call = info.get("call")
    if not isinstance(call, dict):
        raise EventShapeError("result.callInfo.call.id is missing")
    call_id = _short(call, "id", "callInfo.call")
    if not call_id:
        raise EventShapeError("result.callInfo.call.id is missing")
    raw_state = info.get("state")
    if not isinstance(raw_state, str) or not raw_state:
        raise EventShapeError("result.callInfo.state is missing")
    if len(raw_state) > MAX_ID_CHARS:
        raise EventShapeError(f"callInfo.state is longer than {MAX_ID_CHARS} characters")
    duration = info.get("duration")
    return CallEvent(
        call=CallRef(call_id, _short(call, "tag", "callInfo.call")),
        state=_enum(_STATES, CallState.UNKNOWN, raw_state),
        type=_enum(_TYPES, CallType.UNKNOWN, info.get("type")),
        caller=_party(info.get("caller"), "callInfo.caller"),
        callee=_party(info.get("callee"), "callInfo.callee"),
        transport_id=_short(info, "transportId", "callInfo"),
        start_time=_short(info, "startTime", "callInfo"),
        duration_s=int(duration) if isinstance(duration, int | float) else None,
        reason=_short(info, "reason", "callInfo", MAX_TEXT_CHARS),
        reason_code=_short(info, "reasonCode", "callInfo"),
        url_record=_short(info, "urlRecord", "callInfo", MAX_TEXT_CHARS),
        account_id=_short(info, "accountId", "callInfo"),
        raw_state=raw_state,
    )


def parse_event(body: Any) -> Event:
    """Parse a decoded webhook body; raise :class:`EventShapeError` for a wrong shape."""
    if not isinstance(body, dict):
        raise EventShapeError("body must be a JSON object")
    name = body.get("event")
    if not isinstance(name, str) or not name:
        raise EventShapeError("'event' is missing")
    if name == "callNotifications":
        result = body.get("result")
        if not isinstance(result, dict):
            raise EventShapeError("'result' must be an object")
        return parse_call_info(result.get("callInfo"))
    if name == "vpbxNotifications":
        result = body.get("result")
        if not isinstance(result, dict):
            raise EventShapeError("'result' must be an object")
        raw = result.get("eventType")
        if not isinstance(raw, str):
            raise EventShapeError("result.eventType is missing")
        if len(raw) > MAX_ID_CHARS:
            raise EventShapeError(f"result.eventType is longer than {MAX_ID_CHARS} characters")
        try:
            kind = VpbxEventType(raw)
        except ValueError:
            kind = VpbxEventType.UNKNOWN
        return VpbxEvent(type=kind, raw_type=raw)
    return UnknownEvent(name=name[:MAX_ID_CHARS])
