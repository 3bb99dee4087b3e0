"""The recent past of the decisions, in memory, for the status page and ``/status`` "history".

Fed on the hot path by two cheap callbacks and read only when someone asks:

- :meth:`DecisionHistory.record` is the engine's ``on_decision``: it appends the record to a ring
  of the last :data:`RECENT` decisions, adds one to the current minute's count of its outcome
  (the last hour's counters) and, when the record names a manager, to that manager's count for
  the current hour (the last 24 hours, per manager and outcome);
- :meth:`DecisionHistory.answered` is the :class:`~router.answers.AnswerTracker`'s ``on_answer``:
  a decided call was answered at a workplace (or by nobody). When that is the workplace of the
  manager the call was decided for, it counts as answered by that manager, in the hour it was
  decided. The answer may be reported before the record (both come from the same event loop, in
  whatever order MTT's notifications and answers arrive): it then waits in a small map for it.

Nothing is rendered or sorted here until :meth:`DecisionHistory.snapshot`.

Bounded by count and by time (what is past its time goes at the first record of a new minute):
the ring holds :data:`RECENT` records and drops those older than :data:`WINDOW_H` hours; the
minute counters cover one hour; hourly per-manager counters cover :data:`WINDOW_H` hours for at
most :data:`MAX_MANAGERS` managers an hour (the rest count together as :data:`OTHERS`: manager ids
come from the rules, not from callers); calls waiting for an answer are at most
:data:`MAX_PENDING` (the oldest out) for :data:`PENDING_TTL_S`, early answers at most
:data:`MAX_EARLY` for :data:`EARLY_TTL_S`.

Worst-case memory: the ring 50 records of up to ~5 KB (a 256-character caller and a reason
chain), 250 KB; the hourly cells 25 hours x 501 cells of ~250 bytes, 3 MB; the calls waiting for
an answer 10,000 x ~450 bytes (a call id of up to 256 characters), 4.5 MB; early answers 1,000 x
~450 bytes, 0.5 MB; in all under 9 MB.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, tzinfo
from typing import Any, NamedTuple, Protocol

from router.bounds import Bound
from router.dispatch import Outcome

RECENT = 50
"""Decisions kept for the status page's list."""
WINDOW_H = 24
"""Hours of per-manager counters (the current hour and the ones before it)."""
MAX_MANAGERS = 500
"""Managers with their own counters in one hour; more count together as :data:`OTHERS`."""
OTHERS = "(others)"
MAX_PENDING = 10_000
"""Decided calls waiting for their answer (the oldest out first)."""
PENDING_TTL_S = 4 * 3600.0
"""A decided call with no answer reported for this long is forgotten (the answer tracker has
counted it as ``nobody`` by then)."""
MAX_EARLY = 1_000
"""Answers reported before their decision record, waiting for it."""
EARLY_TTL_S = 60.0
"""How long such an answer waits (its record is a command's answer away: well under a second)."""

OUTCOMES: tuple[str, ...] = tuple(o.value for o in Outcome)
_INDEX = {name: i for i, name in enumerate(OUTCOMES)}
_ANSWERED = len(OUTCOMES)
"""A manager's hourly cell: a count per outcome, then the calls answered by him."""
_MINUTES = 60


class Record(Protocol):
    """What is read of a decision record (:class:`router.dispatch.DecisionRecord`)."""

    @property
    def call_id(self) -> str: ...
    @property
    def caller(self) -> str | None: ...
    @property
    def callee(self) -> str | None: ...
    @property
    def outcome(self) -> str: ...
    @property
    def manager(self) -> str | None: ...
    @property
    def workplace(self) -> str | None: ...
    @property
    def reasons(self) -> Sequence[str]: ...
    @property
    def error(self) -> str | None: ...
    @property
    def latency_ms(self) -> float: ...


class _Recent(NamedTuple):
    at: float
    record: Record


class _Pending(NamedTuple):
    manager: str
    workplace: str | None
    hour: int
    expires: float


class DecisionHistory:
    """The last decisions, the last hour by outcome and the last 24 hours per manager.

    ``clock`` is wall-clock time (Unix seconds): minutes and hours are the calendar's.
    """

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._recent: deque[_Recent] = deque(maxlen=RECENT)
        # minute index -> count per outcome; at most the last 60 minutes
        self._minutes: OrderedDict[int, list[int]] = OrderedDict()
        # hour index -> manager -> [count per outcome..., answered]
        self._hours: OrderedDict[int, dict[str, list[int]]] = OrderedDict()
        self._cells = 0
        self._pending: OrderedDict[str, _Pending] = OrderedDict()
        self._early: OrderedDict[str, tuple[str, float]] = OrderedDict()

    # -- the hot path -------------------------------------------------------------------------

    def record(self, record: Record) -> None:
        """The engine's ``on_decision``: one decision (a shed call too) that has ended."""
        now = self._clock()
        index = _INDEX.get(record.outcome)
        if index is None:
            return
        minute = int(now // 60)
        counts = self._minutes.get(minute)
        if counts is None:
            counts = self._new_minute(minute, now)
        counts[index] += 1
        if record.outcome == Outcome.SHED:
            return  # counted; a flood of sheds must not push the real decisions out of the ring
        self._recent.append(_Recent(now, record))
        manager = record.manager
        if manager is None:
            return
        hour = int(now // 3600)
        cells = self._hours.get(hour)
        if cells is None:
            cells = self._new_hour(hour)
        cell = cells.get(manager)
        if cell is None:
            if len(cells) >= MAX_MANAGERS:
                manager = OTHERS
                cell = cells.get(OTHERS)
            if cell is None:
                cell = cells[manager] = [0] * (_ANSWERED + 1)
                self._cells += 1
        cell[index] += 1
        call_id = record.call_id
        early = self._early.pop(call_id, None) if self._early else None
        if early is not None:
            if early[0] == record.workplace:
                cell[_ANSWERED] += 1
            return
        self._pending[call_id] = _Pending(manager, record.workplace, hour, now + PENDING_TTL_S)
        if len(self._pending) > MAX_PENDING:
            self._pending.popitem(last=False)

    def answered(self, call_id: str, workplace: str | None) -> None:
        """The answer tracker's ``on_answer``: ``call_id`` was answered at ``workplace`` (``None``:
        by nobody, or never reported)."""
        pending = self._pending.pop(call_id, None)
        if pending is None:
            if workplace is not None:  # its record may still come
                self._early[call_id] = (workplace, self._clock() + EARLY_TTL_S)
                if len(self._early) > MAX_EARLY:
                    self._early.popitem(last=False)
            return
        if workplace is None or workplace != pending.workplace:
            return
        cell = self._hours.get(pending.hour, {}).get(pending.manager)
        if cell is not None:
            cell[_ANSWERED] += 1

    def _new_minute(self, minute: int, now: float) -> list[int]:
        """A new minute's counters; once a minute at most, everything past its time goes."""
        while self._minutes and next(iter(self._minutes)) <= minute - _MINUTES:
            self._minutes.popitem(last=False)
        self._age_hours(int(now // 3600))
        recent = self._recent
        while recent and recent[0].at <= now - WINDOW_H * 3600:
            recent.popleft()
        while self._pending and next(iter(self._pending.values())).expires <= now:
            self._pending.popitem(last=False)
        while self._early and next(iter(self._early.values()))[1] <= now:
            self._early.popitem(last=False)
        counts = self._minutes[minute] = [0] * len(OUTCOMES)
        return counts

    def _age_hours(self, hour: int) -> None:
        while self._hours and next(iter(self._hours)) <= hour - WINDOW_H:
            _, dropped = self._hours.popitem(last=False)
            self._cells -= len(dropped)

    def _new_hour(self, hour: int) -> dict[str, list[int]]:
        self._age_hours(hour)
        cells: dict[str, list[int]] = {}
        self._hours[hour] = cells
        return cells

    # -- reading ------------------------------------------------------------------------------

    def bound(self) -> Bound:
        """Entries held (ring, hourly cells, calls waiting for an answer, early answers), and the
        most there can be."""
        size = len(self._recent) + self._cells + len(self._pending) + len(self._early)
        most = RECENT + (WINDOW_H + 1) * (MAX_MANAGERS + 1) + MAX_PENDING + MAX_EARLY
        return Bound(size, most)

    def snapshot(self, tz: tzinfo = UTC) -> dict[str, Any]:
        """The last hour by outcome, the last decisions (newest first) and the last
        :data:`WINDOW_H` hours per manager; times as ISO 8601 in ``tz``."""
        now = self._clock()
        minute, hour = int(now // 60), int(now // 3600)
        last_hour = dict.fromkeys(OUTCOMES, 0)
        for index, counts in self._minutes.items():
            if index > minute - _MINUTES:
                for name, count in zip(OUTCOMES, counts, strict=False):
                    last_hour[name] += count
        recent = [
            {
                "at": _iso(entry.at, tz),
                "call_id": entry.record.call_id,
                "caller": entry.record.caller,
                "callee": entry.record.callee,
                "outcome": str(entry.record.outcome),
                "manager": entry.record.manager,
                "workplace": entry.record.workplace,
                "latency_ms": round(entry.record.latency_ms, 1),
                "reasons": list(entry.record.reasons),
                "error": entry.record.error,
            }
            for entry in reversed(self._recent)
            if entry.at > now - WINDOW_H * 3600
        ]
        hours = list(range(hour - WINDOW_H + 1, hour + 1))
        return {
            "last_hour": last_hour,
            "recent": recent,
            "hours": [_iso(h * 3600, tz) for h in hours],
            "managers": self._per_manager(hours),
        }

    def _per_manager(self, hours: list[int]) -> dict[str, dict[str, Any]]:
        names = sorted({m for h in hours for m in self._hours.get(h, {})})
        found: dict[str, dict[str, Any]] = {}
        for name in names:
            series: list[dict[str, Any]] = []
            decided = answered = 0
            for h in hours:
                cell = self._hours.get(h, {}).get(name)
                if cell is None:
                    series.append({"decided": 0, "answered": 0, "outcomes": {}})
                    continue
                outcomes = {o: n for o, n in zip(OUTCOMES, cell, strict=False) if n}
                count = sum(cell[:_ANSWERED])
                decided += count
                answered += cell[_ANSWERED]
                series.append({"decided": count, "answered": cell[_ANSWERED], "outcomes": outcomes})
            found[name] = {
                "decided": decided,
                "answered": answered,
                "hit_rate": round(answered / decided, 3) if decided else None,
                "hours": series,
            }
        return found


def _iso(ts: float, tz: tzinfo) -> str:
    return datetime.fromtimestamp(ts, tz).isoformat(timespec="seconds")
