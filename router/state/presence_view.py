"""Who is on a call, held in this process: bounded, and ``busy()`` without a scan.

Both presence backends serve reads from a :class:`PresenceView`: memory storage as its only copy,
Redis as the local view that survives an outage. It is fed by ``connected``/``finished``
notifications, so its keys come from the internet: it is bounded by construction.

* **By count**: at most :data:`MAX_CALLS_PER_WORKPLACE` calls per workplace (the oldest out
  first: a workplace is on a handful of calls at once, never hundreds) and at most
  :data:`MAX_WORKPLACES` workplaces (the least recently changed out first). The engine records
  presence only for workplaces the directory knows (:func:`router.callmodel.workplace_of`), so in
  practice the workplace count is the PBX's.
* **By time**: every entry expires (the caller's TTL, 4 h from the engine: a ``finished`` may
  never come); expired entries leave on the next read or write.
* **Reads cost no scan**: ``busy()`` returns the same frozenset until a workplace becomes busy or
  free. Expiry goes through a heap of deadlines (lazy deletion, compacted when half stale), so a
  read pops only what has expired since the last one.

Worst-case memory: ``MAX_WORKPLACES * MAX_CALLS_PER_WORKPLACE`` entries of a call id (at most 256
characters, :mod:`router.events`) and a float, about 400 bytes each with the dict and heap slots:
some 80 MB at the limits, a few KB for a real PBX (a 200-workplace office holding 200 calls).
"""

from __future__ import annotations

import heapq
from collections import OrderedDict
from collections.abc import Callable, Iterable

from router.bounds import Bound

MAX_CALLS_PER_WORKPLACE = 32
"""Calls one workplace can be on at once (conference, hold, transfers); the oldest leaves first."""
MAX_WORKPLACES = 5_000
"""Workplaces tracked at once, far above any PBX on this product."""
_COMPACT_MIN = 256


class PresenceView:
    """Workplace -> the calls it is on, each until an expiry on ``clock``."""

    def __init__(
        self,
        clock: Callable[[], float],
        *,
        max_workplaces: int = MAX_WORKPLACES,
        max_calls_per_workplace: int = MAX_CALLS_PER_WORKPLACE,
    ) -> None:
        self._clock = clock
        self._max_workplaces = max_workplaces
        self._max_calls = max_calls_per_workplace
        # workplace -> call id -> expiry; both least recently set first.
        self._calls: OrderedDict[str, OrderedDict[str, float]] = OrderedDict()
        self._entries = 0
        # (expiry, workplace, call id); an item is stale when the map holds another expiry.
        self._deadlines: list[tuple[float, str, str]] = []
        self._busy: frozenset[str] | None = frozenset()

    def __len__(self) -> int:
        """Entries (workplace, call) held."""
        return self._entries

    def bound(self) -> Bound:
        """Entries held, and the most there can be."""
        return Bound(self._entries, self._max_workplaces * self._max_calls)

    def busy(self) -> frozenset[str]:
        """Workplaces on a call now; the same frozenset until one becomes busy or free."""
        self._expire(self._clock())
        busy = self._busy
        if busy is None:
            busy = self._busy = frozenset(self._calls)
        return busy

    def calls(self, workplace: str) -> tuple[str, ...]:
        """The calls ``workplace`` is on (oldest first)."""
        self._expire(self._clock())
        return tuple(self._calls.get(workplace, ()))

    def set(self, workplace: str, call_id: str, expiry: float | None) -> None:
        """``workplace`` is on ``call_id`` until ``expiry``; ``None``: it is not (any more)."""
        now = self._clock()
        self._expire(now)
        if expiry is None or expiry <= now:
            self._remove(workplace, call_id)
            return
        calls = self._calls.get(workplace)
        if calls is None:
            calls = self._calls[workplace] = OrderedDict()
            self._busy = None
            while len(self._calls) > self._max_workplaces:
                self._drop_workplace(next(iter(self._calls)))
        else:
            self._calls.move_to_end(workplace)
        if calls.pop(call_id, None) is None:
            self._entries += 1
        calls[call_id] = expiry
        while len(calls) > self._max_calls:
            calls.popitem(last=False)
            self._entries -= 1
        heapq.heappush(self._deadlines, (expiry, workplace, call_id))
        self._compact()

    def replace(self, entries: Iterable[tuple[str, str, float]]) -> None:
        """Take a whole new view (a snapshot from Redis), the same bounds applied."""
        self._calls.clear()
        self._deadlines.clear()
        self._entries = 0
        self._busy = None
        for workplace, call_id, expiry in entries:
            self.set(workplace, call_id, expiry)

    def _remove(self, workplace: str, call_id: str) -> None:
        calls = self._calls.get(workplace)
        if calls is not None and calls.pop(call_id, None) is not None:
            self._entries -= 1
            if not calls:
                del self._calls[workplace]
                self._busy = None

    def _drop_workplace(self, workplace: str) -> None:
        self._entries -= len(self._calls.pop(workplace))
        self._busy = None

    def _expire(self, now: float) -> None:
        deadlines = self._deadlines
        while deadlines and deadlines[0][0] <= now:
            expiry, workplace, call_id = heapq.heappop(deadlines)
            calls = self._calls.get(workplace)
            if calls is not None and calls.get(call_id) == expiry:
                self._remove(workplace, call_id)

    def _compact(self) -> None:
        # Every set pushes a deadline; drop the stale ones once they are half the heap.
        if len(self._deadlines) < max(_COMPACT_MIN, 2 * self._entries):
            return
        self._deadlines = [
            (expiry, workplace, call_id)
            for workplace, calls in self._calls.items()
            for call_id, expiry in calls.items()
        ]
        heapq.heapify(self._deadlines)
