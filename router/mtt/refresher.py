"""The token manager's background task: refresh ahead of time, back off on errors, never die.

It sleeps until :func:`next_refresh_at` of the current set (80% of the access
token's life, or earlier to keep the refresh token valid), waking early when the set changes
(a login), then asks the manager for a refresh. Transient failures are retried with back-off
(1 s doubling to 60 s). While a login is needed it re-reads the store every ``poll_s`` seconds,
so a login done elsewhere (`mtt-router auth login`, another replica) is picked up.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import TYPE_CHECKING

import structlog

from router.errors import NeedsLoginError
from router.mtt.tokens import TokenSet

if TYPE_CHECKING:
    from router.mtt.auth import TokenManager

REFRESH_TOKEN_MARGIN_S = 6 * 3600.0
"""Refresh at least this long (at most 20% of its lifetime) before the refresh token lapses."""
MAX_SLEEP_S = 60.0
"""Re-read the clock at least this often (the wall clock may jump, hosts sleep)."""
BACKOFF_MIN_S, BACKOFF_MAX_S = 1.0, 60.0
MIN_INTERVAL_S = 0.5
"""Refreshes start at least this far apart, whatever lifetimes MTT hands out."""


def next_refresh_at(tokens: TokenSet) -> float:
    """At 80% of the access lifetime, or earlier to keep the refresh token valid."""
    due = tokens.refresh_due_at()
    margin = min(REFRESH_TOKEN_MARGIN_S, 0.2 * (tokens.refresh_expires_at - tokens.obtained_at))
    keep_alive = tokens.refresh_expires_at - margin
    if keep_alive > tokens.obtained_at:  # else this set already carries a non-rotated token
        due = min(due, keep_alive)
    return due


class Refresher:
    """One owned task; :meth:`close` cancels it."""

    def __init__(self, manager: TokenManager, changed: asyncio.Event, *, poll_s: float) -> None:
        self._manager = manager
        self._changed = changed
        self._poll_s = poll_s
        self._task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        """True while the task is alive."""
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        """Start the task."""
        self._task = asyncio.create_task(self._run(), name="mtt-token-refresher")

    async def close(self) -> None:
        """Cancel the task and wait for it to end."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel("token manager closing")
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        manager = self._manager
        backoff = BACKOFF_MIN_S
        last_attempt = float("-inf")
        while True:
            self._changed.clear()
            manager.update_gauges()
            tokens = manager.tokens
            if tokens is None or not manager.refreshable:
                await self._wait(self._poll_s)
                await manager.reload()
                continue
            delay = next_refresh_at(tokens) - manager.now()
            if delay <= 0:
                delay = last_attempt + MIN_INTERVAL_S - time.monotonic()  # never spin
            if delay > 0:
                await self._wait(min(delay, MAX_SLEEP_S))
                continue
            last_attempt = time.monotonic()
            try:
                await manager.refresh()
                backoff = BACKOFF_MIN_S
            except NeedsLoginError:
                continue
            except Exception as exc:  # never let the refresher die; the next try may work
                structlog.get_logger("router.auth").warning(
                    "token_refresh_retry", in_s=backoff, error_type=type(exc).__name__
                )
                await self._wait(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX_S)

    async def _wait(self, delay_s: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay_s):
                await self._changed.wait()
