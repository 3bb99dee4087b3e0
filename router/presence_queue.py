"""Presence writes in arrival order: ``connected`` before ``finished``, even with Redis.

The engine learns who is on a call from notifications and hands each change to a
:class:`PresenceQueue`; one worker task applies them to the storage's
:class:`~router.state.protocols.Presence` in order, and a burst of notifications costs one task
instead of one each. Reads (``busy()``) go to the storage's local view directly.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Coroutine
from typing import Any

import structlog

from router.bounds import Bound
from router.log_limit import LineLimiter
from router.state.protocols import Presence

log = structlog.get_logger("router.engine")

MAX_QUEUED = 10_000
"""Changes waiting for the storage, at most; past it the oldest is dropped (the TTL covers it)."""
BUSY_TTL_S = 4 * 3600.0
"""Safety net: a workplace whose ``finished`` never arrived is free again after this."""

Spawn = Callable[[Coroutine[Any, Any, Any]], None]


class PresenceQueue:
    """Queues busy/free changes and applies them with one worker at a time.

    ``spawn`` starts the worker as a task owned by the engine (drained on shutdown). The queue
    holds the changes that arrived while the worker waited on the storage: at most ``max_queued``
    (a hung storage must not grow it without bound), the oldest dropped first with one log line a
    second. Worst-case memory: ``max_queued`` changes of a workplace id and a call id (at most 256
    characters each), about 8 MB at the default.
    """

    def __init__(self, presence: Presence, spawn: Spawn, *, max_queued: int = MAX_QUEUED) -> None:
        self._presence = presence
        self._spawn = spawn
        self._max = max_queued
        self._ops: deque[tuple[bool, str, str]] = deque()
        self._working = False
        self._dropped_lines = LineLimiter()
        self.dropped = 0
        """Changes dropped because the queue was full."""

    def bound(self) -> Bound:
        """Changes waiting, and the most there can be."""
        return Bound(len(self._ops), self._max)

    def busy(self, workplace: str, call_id: str) -> None:
        """``workplace`` is on ``call_id``."""
        self._queue(True, workplace, call_id)

    def free(self, workplace: str, call_id: str) -> None:
        """``call_id`` ended on ``workplace``."""
        self._queue(False, workplace, call_id)

    def _queue(self, busy: bool, workplace: str, call_id: str) -> None:
        if len(self._ops) >= self._max:
            self._ops.popleft()
            self.dropped += 1
            if (held := self._dropped_lines.allow(time.monotonic())) is not None:
                log.warning(
                    "presence_queue_full",
                    max_queued=self._max,
                    dropped=self.dropped,
                    held_back=held,
                    hint="the storage is not keeping up; the oldest presence change was dropped",
                )
        self._ops.append((busy, workplace, call_id))
        if not self._working:
            self._working = True
            self._spawn(self._apply())

    async def _apply(self) -> None:
        try:
            while self._ops:
                busy, workplace, call_id = self._ops.popleft()
                try:
                    if busy:
                        await self._presence.set_busy(workplace, call_id, BUSY_TTL_S)
                    else:
                        await self._presence.set_free(workplace, call_id)
                except Exception as exc:  # one lost update must not stall the ones behind it
                    log.error("presence_update_failed", workplace=workplace, error=repr(exc))
        finally:
            self._working = False
