"""Time, as the daemon sees it: the event loop's clock for deadlines, the wall clock for schedules.

Both are behind :class:`Clock` so that tests and the demo can pin them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Protocol

WallClock = Callable[[], datetime]
"""Timezone-aware wall-clock time; the demo and tests pin it, the daemon uses :func:`utc_now`."""


class Clock(Protocol):
    """Time as the engine sees it."""

    def monotonic(self) -> float:
        """The event loop's clock: receipt times, deadlines and latency are on it."""
        ...

    def now(self) -> datetime:
        """Timezone-aware wall-clock time: schedules are judged by it."""
        ...


def utc_now() -> datetime:
    """Now, in UTC."""
    return datetime.now(UTC)


class LoopClock:
    """The real clock: the running loop's ``time()`` and the wall clock (``wall`` is injectable:
    the demo pins it to a working Tuesday)."""

    def __init__(self, wall: WallClock = utc_now) -> None:
        self._wall = wall

    def monotonic(self) -> float:
        """``loop.time()``: the clock MTT client deadlines use."""
        return asyncio.get_running_loop().time()

    def now(self) -> datetime:
        """The wall clock."""
        return self._wall()
