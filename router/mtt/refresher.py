"""The background refresh loop: refresh ahead of time, back off on errors, never die.

It sleeps until :func:`~router.mtt.tokens.next_refresh_at` of the current set (80% of the access
token's life, or earlier to keep the refresh token valid), waking early when the set changes
(a login), then asks for a refresh. Transient failures are retried with back-off (1 s doubling
to 60 s). While a login is needed it re-reads the store every ``poll_s`` seconds, so a login
done elsewhere (`mtt-router auth login`, another replica) is picked up.

It knows the token state and the refresh only through the two small protocols below.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Protocol

import structlog

from router.errors import NeedsLoginError
from router.mtt.tokens import TokenSet, next_refresh_at

MAX_SLEEP_S = 60.0
"""Re-read the clock at least this often (the wall clock may jump, hosts sleep)."""
BACKOFF_MIN_S, BACKOFF_MAX_S = 1.0, 60.0
MIN_INTERVAL_S = 0.5
"""Refreshes start at least this far apart, whatever lifetimes MTT hands out."""


class Waiter(Protocol):
    """Waits for one change of the token set."""

    async def wait(self, timeout_s: float) -> bool:
        """True once the set changed, False when ``timeout_s`` passed first."""
        ...


class WatchedTokens(Protocol):
    """What the loop reads (:class:`~router.mtt.token_state.TokenState` is one)."""

    @property
    def tokens(self) -> TokenSet | None:
        """The current set."""
        ...

    @property
    def refreshable(self) -> bool:
        """True when a refresh may be tried."""
        ...

    def now(self) -> float:
        """Unix seconds, on the clock the set's times use."""
        ...

    def update_gauges(self) -> None:
        """Bring the token gauges up to date."""
        ...

    def changed(self) -> Waiter:
        """A waiter for the next change of the set."""
        ...


class TokenSource(Protocol):
    """What the loop asks for (:class:`~router.mtt.token_grants.TokenGrants` is one)."""

    async def refresh(self) -> TokenSet:
        """Refresh now (or join the refresh running)."""
        ...

    async def reload(self) -> None:
        """Pick up a set stored elsewhere; remind the operator while a login is needed."""
        ...


class Refresher:
    """One owned task; :meth:`close` cancels it."""

    def __init__(self, tokens: WatchedTokens, source: TokenSource, *, poll_s: float) -> None:
        self._tokens = tokens
        self._source = source
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
        watched, source = self._tokens, self._source
        backoff = BACKOFF_MIN_S
        last_attempt = float("-inf")
        while True:
            # Taken first: a change made while this round runs cuts its wait short.
            change = watched.changed()
            watched.update_gauges()
            tokens = watched.tokens
            if tokens is None or not watched.refreshable:
                await change.wait(self._poll_s)
                await source.reload()
                continue
            delay = next_refresh_at(tokens) - watched.now()
            if delay <= 0:
                delay = last_attempt + MIN_INTERVAL_S - time.monotonic()  # never spin
            if delay > 0:
                await change.wait(min(delay, MAX_SLEEP_S))
                continue
            last_attempt = time.monotonic()
            try:
                await source.refresh()
                backoff = BACKOFF_MIN_S
            except NeedsLoginError:
                continue
            except Exception as exc:  # never let the refresher die; the next try may work
                structlog.get_logger("router.auth").warning(
                    "token_refresh_retry", in_s=backoff, error_type=type(exc).__name__
                )
                await change.wait(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX_S)
