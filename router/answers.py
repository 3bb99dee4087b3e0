"""Who answered the parked calls the daemon decided: the personal-manager hit rate.

``mtt_router_answered_total{by}`` counts each decided call (live or shadow) once, when it ends up
``connected`` somewhere or ``finished`` unanswered: ``personal`` (the caller's own manager's
workplace), ``fallback`` (a fallback manager's), ``other`` (someone else's) or ``nobody``. In
shadow mode this is the hit rate of the PBX's own routing: the baseline to compare against.

``on_answer(call_id, workplace)`` hears of each counted call too (``None``: nobody answered): the
status page's per-manager hit rate (:mod:`router.history`).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

from router.bounds import Bound
from router.events import CallState
from router.metrics import Metrics
from router.routing import Decision
from router.rules.model import Rules

MAX_CALLS = 100_000
"""Decided calls remembered until they are answered or end; the oldest count as ``nobody``."""
TTL_S = 4 * 3600.0
"""A decided call with no ``connected`` or ``finished`` for this long counts as ``nobody``."""


class AnswerTracker:
    """Remembers the roles of the workplaces of each decided call until the call is answered.

    Worst-case memory: :data:`MAX_CALLS` entries of a call id and a few workplace ids each,
    about 400 bytes apiece: some 40 MB. Each decision prunes at most the entries that expired.
    """

    def __init__(
        self,
        metrics: Metrics,
        *,
        max_calls: int = MAX_CALLS,
        ttl_s: float = TTL_S,
        clock: Callable[[], float] = time.monotonic,
        on_answer: Callable[[str, str | None], None] | None = None,
    ) -> None:
        self._counts = {
            by: metrics.answered.labels(by) for by in ("personal", "deputy", "fallback", "other")
        }
        self._nobody = metrics.answered.labels("nobody")
        self._max = max_calls
        self._ttl_s = ttl_s
        self._clock = clock
        self._on_answer = on_answer
        # call id -> (workplace -> role, expiry)
        self._calls: OrderedDict[str, tuple[dict[str, str], float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._calls)

    def bound(self) -> Bound:
        """Decided calls remembered, and the most there can be."""
        return Bound(len(self._calls), self._max)

    def decided(self, call_id: str, rules: Rules, decision: Decision) -> None:
        """Remember whose workplaces count as whose for ``call_id``."""
        roles: dict[str, str] = {}
        # Later roles win a shared workplace: the caller's own manager above all.
        for role, names in (
            ("fallback", decision.fallback),
            ("deputy", (decision.deputy,)),
            ("personal", (decision.own,)),
        ):
            for manager_id in names:
                manager = rules.managers.get(manager_id) if manager_id is not None else None
                if manager is not None:
                    roles[manager.workplace] = role
        now = self._clock()
        self._calls[call_id] = (roles, now + self._ttl_s)
        self._calls.move_to_end(call_id)
        while self._calls:
            _, expiry = next(iter(self._calls.values()))
            if expiry > now and len(self._calls) <= self._max:
                break
            gone, _ = self._calls.popitem(last=False)
            self._nobody.inc()
            if self._on_answer is not None:
                self._on_answer(gone, None)

    def observe(self, call_id: str, state: CallState, workplace: str | None) -> None:
        """A later notification of a call: ``connected`` at ``workplace``, or ``finished``."""
        if state is CallState.CONNECTED:
            entry = self._calls.pop(call_id, None)
            if entry is not None:
                role = entry[0].get(workplace, "other") if workplace is not None else "other"
                self._counts[role].inc()
                if self._on_answer is not None:
                    self._on_answer(call_id, workplace)
        elif state is CallState.FINISHED and self._calls.pop(call_id, None) is not None:
            self._nobody.inc()
            if self._on_answer is not None:
                self._on_answer(call_id, None)
