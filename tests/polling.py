"""The one way tests wait for something another task, process or replica brings about.

``await eventually(check, "what we wait for", timeout_s=...)`` calls ``check`` (sync or async)
every ``interval_s`` until it returns something truthy, and returns that value; on timeout it
raises an AssertionError naming what was awaited. A check that hangs is cut off by the timeout
too. :func:`eventually_sync` is the same for code that cannot await (a fixture starting a
server process).
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, overload

T = TypeVar("T")

TIMEOUT_S = 10.0
"""Default bound: a healthy run takes a fraction of it; a loaded 2-core CI box needs the rest."""
INTERVAL_S = 0.01


# Typed so that a check answering ``X | None`` (sync or async) gives ``X``: None is never returned.
@overload
async def eventually(
    check: Callable[[], Awaitable[T | None]],
    what: str,
    *,
    timeout_s: float = ...,
    interval_s: float = ...,
) -> T: ...


@overload
async def eventually(
    check: Callable[[], T | None], what: str, *, timeout_s: float = ..., interval_s: float = ...
) -> T: ...


async def eventually(
    check: Callable[[], Any],
    what: str,
    *,
    timeout_s: float = TIMEOUT_S,
    interval_s: float = INTERVAL_S,
) -> Any:
    """The first truthy value of ``check()`` (awaited if it is awaitable), polled until then.

    Raises AssertionError ``not within {timeout_s} s: {what}`` when ``timeout_s`` passes first.
    """
    try:
        async with asyncio.timeout(timeout_s) as deadline:
            while True:
                value = check()
                if inspect.isawaitable(value):
                    value = await value
                if value:
                    return value
                await asyncio.sleep(interval_s)
    except TimeoutError:
        if not deadline.expired():
            raise  # the check's own timeout, not ours: let it through as it is
        raise AssertionError(f"not within {timeout_s:g} s: {what}") from None


def eventually_sync(
    check: Callable[[], T | None],
    what: str,
    *,
    timeout_s: float = TIMEOUT_S,
    interval_s: float = INTERVAL_S,
) -> T:
    """:func:`eventually` for code that cannot await; blocks the thread while it waits."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"not within {timeout_s:g} s: {what}")
        time.sleep(interval_s)
