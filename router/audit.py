"""The call-model audit: notification sequences :mod:`router.callmodel` did not expect.

MTT's document shows each notification but not a call's whole sequence; the model is our
inference. Every notification the engine handles passes through :meth:`CallAudit.observe`, which
compares it with the last state seen for its call against :data:`router.callmodel.EXPECTED_AFTER`
(derived from the model's flows) and looks for a leg at a workplace the directory does not know.
Each surprise increments ``mtt_router_callmodel_surprises_total{kind}`` and is logged with the
notification, at most one line per second per kind, with a count of the lines held back: real
traffic corrects the model, a flood does not flood the logs.

The audit sees what one process receives: behind a balancer that splits a call's notifications
between replicas, each replica reports the gaps it sees.

Worst-case memory: per-call tracking holds at most :data:`MAX_CALLS` calls (the oldest out
first, and none older than :data:`TTL_S`), each a call id of at most :data:`MAX_CALL_ID_CHARS`
characters (longer ones are reported, never tracked), its last state and when it was first seen:
some 400 bytes a call with the longest ids, about 20 MB in all (some 200 bytes and 10 MB with ids
of the document's length); the log limiter keeps two numbers per :class:`Surprise` kind.
"""

from __future__ import annotations

import enum
import math
from collections import OrderedDict, deque
from typing import Any

import structlog

from router import callmodel
from router.bounds import Bound
from router.events import CallEvent, CallState, CallType, Party
from router.metrics import Metrics

log = structlog.get_logger("router.audit")

MAX_CALLS = 50_000
"""Calls tracked at once; beyond it the oldest is forgotten."""
TTL_S = 4 * 3600.0
"""A call not seen to start for this long is forgotten (no call lasts that long)."""
MAX_CALL_ID_CHARS = 256
LOG_INTERVAL_S = 1.0
"""At most one log line per kind per this many seconds."""


class Surprise(enum.StrEnum):
    """``mtt_router_callmodel_surprises_total{kind}``: what the model did not expect."""

    NO_TRYING = "no_trying"
    """A call's first notification is not ``trying`` (or the call was forgotten)."""
    SECOND_TRYING = "second_trying"
    """``trying`` for a call already seen: a redelivery, or a call announced again."""
    CONNECTED_WITHOUT_SHOWING = "connected_without_showing"
    AFTER_FINISHED = "after_finished"
    """Anything but one ``recorded`` after ``finished``."""
    RECORDED_BEFORE_FINISHED = "recorded_before_finished"
    OUT_OF_ORDER = "out_of_order"
    """Any other order the model does not know (e.g. ``hiding`` with no ``showing``)."""
    UNKNOWN_STATE = "unknown_state"
    UNKNOWN_TYPE = "unknown_type"
    """A call leg with no known ``type`` (only ``recorded`` comes without one)."""
    UNKNOWN_WORKPLACE = "unknown_workplace"
    """A leg at a workplace the directory does not know, and no forwarder to explain it."""
    LONG_CALL_ID = "long_call_id"
    """A call id too long to track."""


def sequence_surprise(previous: CallState | None, state: CallState) -> Surprise | None:
    """What is surprising about ``state`` following ``previous`` (``None``: first seen)."""
    if state in callmodel.EXPECTED_AFTER.get(previous, ()):
        return None
    if state is CallState.UNKNOWN:
        return Surprise.UNKNOWN_STATE
    if previous is None:
        return Surprise.NO_TRYING
    if state is CallState.TRYING:
        return Surprise.SECOND_TRYING
    if previous is CallState.FINISHED or previous is CallState.RECORDED:
        return Surprise.AFTER_FINISHED
    if state is CallState.CONNECTED:
        return Surprise.CONNECTED_WITHOUT_SHOWING
    if state is CallState.RECORDED:
        return Surprise.RECORDED_BEFORE_FINISHED
    return Surprise.OUT_OF_ORDER


class CallAudit:
    """Follows each call's notifications; counts and logs what the call model did not expect."""

    def __init__(
        self,
        metrics: Metrics,
        pbx: callmodel.PbxView | None = None,
        *,
        max_calls: int = MAX_CALLS,
        ttl_s: float = TTL_S,
        log_interval_s: float = LOG_INTERVAL_S,
    ) -> None:
        self._pbx = pbx
        self._max = max_calls
        self._ttl_s = ttl_s
        self._interval_s = log_interval_s
        # call id -> last state, in the order first seen; and when each was first seen, in the same
        # order. Strings, enum members and floats only: nothing here for the garbage collector
        # to walk (50,000 tracked objects would double the cost of each full collection).
        self._calls: OrderedDict[str, CallState] = OrderedDict()
        self._since: deque[float] = deque()
        # Bound label children: .labels() costs a lookup and a lock per call otherwise.
        self._counters = {kind: metrics.callmodel_surprises.labels(kind.value) for kind in Surprise}
        self._logged_at = dict.fromkeys(Surprise, -math.inf)
        self._held = dict.fromkeys(Surprise, 0)

    def __len__(self) -> int:
        return len(self._calls)

    def bound(self) -> Bound:
        """Calls tracked, and the most there can be."""
        return Bound(len(self._calls), self._max)

    def observe(self, event: CallEvent, now: float, workplace: str | None = None) -> None:
        """One notification at ``now`` (monotonic seconds); ``workplace`` is the one its leg is
        at by :func:`router.callmodel.workplace_of` (looked up for the states that have one)."""
        call_id, state = event.call.id, event.state
        if len(call_id) > MAX_CALL_ID_CHARS:
            self._report(Surprise.LONG_CALL_ID, event, None, now)
            return
        previous = self._calls.get(call_id)
        kind = sequence_surprise(previous, state)
        if kind is not None:
            self._report(kind, event, previous, now)
        if event.type is CallType.UNKNOWN and state is not CallState.RECORDED:
            self._report(Surprise.UNKNOWN_TYPE, event, previous, now)
        if (
            workplace is None
            and state in callmodel.AT_WORKPLACE
            and self._pbx is not None
            and self._pbx.workplace_ids is not None
            and not event.forwarded
        ):
            self._report(Surprise.UNKNOWN_WORKPLACE, event, previous, now)
        if state is CallState.UNKNOWN:
            return
        if previous is not None:
            self._calls[call_id] = state  # an existing key keeps its place in the order
            return
        self._calls[call_id] = state
        self._since.append(now)
        self._prune(now)

    def _prune(self, now: float) -> None:
        # Tracked in the order first seen: the oldest is always at the front of both.
        calls, since, oldest = self._calls, self._since, now - self._ttl_s
        while len(calls) > self._max or since[0] < oldest:
            calls.popitem(last=False)
            since.popleft()

    def _report(
        self, kind: Surprise, event: CallEvent, previous: CallState | None, now: float
    ) -> None:
        self._counters[kind].inc()
        if now - self._logged_at[kind] < self._interval_s:
            self._held[kind] += 1
            return
        held, self._held[kind] = self._held[kind], 0
        self._logged_at[kind] = now
        outside, inside = (
            (event.callee, event.caller)
            if event.type is CallType.OUTGOING
            else (event.caller, event.callee)
        )
        log.warning(
            "callmodel_surprise",
            kind=kind.value,
            call_id=event.call.id[:MAX_CALL_ID_CHARS],
            state=event.raw_state or event.state.value,
            previous=None if previous is None else previous.value,
            held_back=held,
            caller=outside.number,  # the client's number: masked with log.mask_numbers
            notification=_describe(event, inside),
        )


def _describe(event: CallEvent, inside: Party) -> dict[str, Any]:
    """The notification's fields as MTT sent them, the client's number left to ``caller``."""
    return {
        "call": {"id": event.call.id[:MAX_CALL_ID_CHARS], "tag": event.call.tag},
        "state": event.raw_state,
        "type": event.type.value,
        "transportId": event.transport_id,
        "accountId": event.account_id,
        "pbx_side": {
            "id": inside.id,
            "accountId": inside.account_id,
            "displayId": inside.display_id,
            "forwarderList": list(inside.forwarders),
        },
    }
