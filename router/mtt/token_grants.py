"""Getting token sets from MTT: the single-flight refresh, the login, the needs-login notice.

* Every refresh is single-flight: however many callers find the token expired (or get a 401) at
  once, one request reaches MTT and all of them get its answer. The refresh runs in a task owned
  here, so a caller whose own deadline passes does not cancel it half-way (which could lose a
  refresh token that MTT has already rotated).
* A refreshed set is saved to the store *before* anyone uses it; the store's ``refresh_lock`` and
  versioned compare-and-set let several processes (the daemon and a CLI command, or replicas on
  Redis) share one token set: who finds a newer set in the store adopts it instead of refreshing.
* A refused refresh token (``invalid_grant``) or none at all means "needs login":
  :class:`NeedsLoginError` for callers and a log line saying where to start a login (repeated
  every 10 minutes while waiting). It is left by a login, or a newer stored set. The line holds
  no authorize URL: its ``state`` would be a live single-use login for whoever reads the logs.

The current set and its persistence are :class:`~router.mtt.token_state.TokenState`'s. No token
is ever logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
import secrets
import time
from collections.abc import Callable
from typing import Any

from router.errors import (
    AuthError,
    InvalidGrantError,
    InvalidStateError,
    NeedsLoginError,
    UpstreamError,
)
from router.log_limit import LineLimiter
from router.metrics import Metrics
from router.mtt.oauth import OAuthClient
from router.mtt.token_state import TokenState, iso, log, skew
from router.mtt.tokens import TokenResponse, TokenSet
from router.state.protocols import OAuthStateStore, TokenStore

STATE_TTL_S = 600.0
"""An OAuth ``state`` (and so an authorize URL) is good for 10 minutes, once."""
LOGIN_HINT = "GET /oauth/start on the admin listener, or run `mtt-router auth login`"
"""Where the needs-login line sends the operator (both create a fresh ``state`` on demand)."""
CLOSE_WAIT_S = 10.0
"""On close, an in-flight refresh may finish (its answer must be saved) for this long."""
MIN_REFRESH_INTERVAL_S = 5.0
"""A 401 causes no refresh within this long of the last new token: a storm of 401s costs one
refresh per interval, and MTT refusing fresh tokens too is no refresh loop."""


def _consume(task: asyncio.Task[Any]) -> None:
    # Every waiter may have given up (deadline passed); fetch the outcome so asyncio does not warn.
    if not task.cancelled():
        task.exception()


class TokenGrants:
    """Refreshes (single-flight) and logins for one :class:`TokenState`."""

    def __init__(
        self,
        state: TokenState,
        oauth: OAuthClient,
        store: TokenStore,
        states: OAuthStateStore,
        metrics: Metrics,
        *,
        refresh_timeout_s: float = 10.0,
        state_ttl_s: float = STATE_TTL_S,
        min_refresh_interval_s: float = MIN_REFRESH_INTERVAL_S,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._state = state
        self._oauth = oauth
        self._store = store
        self._states = states
        self._metrics = metrics
        self._refresh_timeout_s = refresh_timeout_s
        self._state_ttl_s = state_ttl_s
        self._announced_at: float | None = None
        self._refresh_task: asyncio.Task[TokenSet] | None = None
        self._min_interval_s = min_refresh_interval_s
        self._monotonic = monotonic
        self._renewed_at = -math.inf  # monotonic() of the last new set (refresh or login)
        self._refused_lines = LineLimiter()

    def __repr__(self) -> str:
        return f"TokenGrants(state={self._state!r})"

    async def close(self) -> None:
        """Let an in-flight refresh finish (briefly) so its answer is saved, else cancel it."""
        task = self._refresh_task
        if task is not None and not task.done():
            await asyncio.wait((task,), timeout=CLOSE_WAIT_S)
            if not task.done():
                task.cancel("token manager closing")
                # Closing: however the refresh ended, it has been logged and nobody awaits it.
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    # -- tokens for callers -----------------------------------------------------------------

    async def access_token(self) -> str:
        """A usable access token, refreshing first (single-flight) if it has expired."""
        state = self._state
        token = state.cached_access_token()
        if token is not None:
            return token
        tokens = state.tokens
        if tokens is None or state.login_required:
            # No I/O here: a login, or the refresher's poll of the store, leaves this state.
            if tokens is not None and state.access_usable(tokens, state.now()):
                return tokens.access_token
            raise NeedsLoginError("no usable MTT token: run `mtt-router auth login`")
        if state.access_usable(tokens, state.now()):
            # Inside the early-expiry margin but still valid: refresh in the background (one
            # shared task) and use this token, rather than make a parked call wait on OAuth.
            self._start_refresh()
            return tokens.access_token
        return (await self.refresh()).access_token

    async def refresh_after_401(self, used_token: str) -> str:
        """A token other than ``used_token`` (which MTT refused); one refresh for all callers."""
        state = self._state
        tokens = state.tokens
        if tokens is not None and tokens.access_token != used_token:
            return tokens.access_token  # someone already refreshed
        if tokens is None or state.login_required:
            state.refuse_access(used_token)
            state.update_gauges()
            raise NeedsLoginError("no usable MTT token: run `mtt-router auth login`")
        now = self._monotonic()
        if now - self._renewed_at < self._min_interval_s:
            # MTT refused a token it issued moments ago: another refresh now could only loop.
            # The token stays in use; the first 401 after the interval refreshes again.
            self._metrics.token_refreshes.labels("throttled").inc()
            if (held := self._refused_lines.allow(now)) is not None:
                log().warning(
                    "token_refused_fresh",
                    issued_s_ago=round(now - self._renewed_at, 3),
                    held_back=held,
                    hint=f"MTT answered 401 to a new token; at most one refresh per "
                    f"{self._min_interval_s:g} s",
                )
            raise AuthError(
                "MTT refused a token issued moments ago (401); not refreshing again yet",
                status=401,
            )
        state.refuse_access(used_token)
        return (await self.refresh()).access_token

    # -- refresh ----------------------------------------------------------------------------

    async def refresh(self) -> TokenSet:
        """Refresh now, or join the refresh already running (one request for all callers)."""
        task = self._start_refresh()
        # asyncio.wait, not await: a caller cancelled by its deadline must not cancel the refresh.
        await asyncio.wait((task,))
        return task.result()

    def _start_refresh(self) -> asyncio.Task[TokenSet]:
        task = self._refresh_task
        if task is None or task.done():
            task = asyncio.create_task(self._refresh(), name="mtt-token-refresh")
            task.add_done_callback(_consume)
            self._refresh_task = task
        return task

    async def _refresh(self) -> TokenSet:
        state = self._state
        async with self._store.refresh_lock():
            await state.persist_unsaved()
            held = state.tokens
            stored = await self._store.load()
            now = state.now()
            if stored is not None and (held is None or stored.version > held.version):
                state.adopt(stored)  # another process refreshed (or logged in) meanwhile
                if now < stored.access_expires_at - skew(stored):
                    self._metrics.token_refreshes.labels("skipped").inc()
                    log().info(
                        "token_refresh_skipped", reason="newer set in store", version=stored.version
                    )
                    return stored
                held = stored
            if held is None:
                raise await self._enter_needs_login("no tokens stored")
            if not held.refresh_valid(now):
                raise await self._enter_needs_login("refresh token expired")
            try:
                answer = await self._oauth.refresh(
                    held.refresh_token, timeout_s=self._refresh_timeout_s
                )
            except InvalidGrantError:
                self._metrics.token_refreshes.labels("invalid_grant").inc()
                again = await self._store.load()  # a sibling may have rotated it a moment ago
                if again is not None and again.version > held.version:
                    state.adopt(again)
                    log().info(
                        "token_refresh_skipped",
                        reason="rotated by another process",
                        version=again.version,
                    )
                    return again
                raise await self._enter_needs_login(
                    "refresh token refused (invalid_grant)"
                ) from None
            except UpstreamError as exc:
                self._metrics.token_refreshes.labels("error").inc()
                log().warning("token_refresh_failed", error=str(exc), error_type=type(exc).__name__)
                raise
            tokens = self._next_set(held, answer)
            await state.save_refreshed(tokens, held.version)
            self._renewed_at = self._monotonic()
            self._metrics.token_refreshes.labels("ok").inc()
            log().info(
                "token_refreshed",
                access_expires_at=iso(tokens.access_expires_at),
                refresh_expires_at=iso(tokens.refresh_expires_at),
                rotated=tokens.refresh_token != held.refresh_token,
                version=tokens.version,
            )
            return tokens

    def _next_set(self, held: TokenSet, answer: TokenResponse) -> TokenSet:
        tokens = TokenSet.from_response(answer, now=self._state.now(), version=held.version + 1)
        if not tokens.refresh_token or tokens.refresh_token == held.refresh_token:
            # Not rotated: the old refresh token keeps the lifetime it was issued with.
            tokens = dataclasses.replace(
                tokens,
                refresh_token=held.refresh_token,
                refresh_expires_at=held.refresh_expires_at,
            )
        return tokens

    # -- login ------------------------------------------------------------------------------

    async def begin_login(self) -> str:
        """A fresh single-use ``state`` (valid 10 min) and the authorize URL that carries it."""
        state = secrets.token_urlsafe(24)
        await self._states.put(state, self._state_ttl_s)
        return self._oauth.authorize_url(state)

    async def complete_login(self, code: str, state: str) -> TokenSet:
        """Finish the OAuth callback: check ``state``, exchange ``code``, store the new set."""
        if not await self._states.redeem(state):
            raise InvalidStateError(
                "OAuth state is unknown, expired or already used", method="oauthCallback"
            )
        answer = await self._oauth.exchange_code(code)
        async with self._store.refresh_lock():
            stored = await self._store.load()
            held = self._state.tokens
            newest = max((s.version for s in (stored, held) if s is not None), default=0)
            tokens = TokenSet.from_response(answer, now=self._state.now(), version=newest + 1)
            await self._state.save_login(tokens)
        self._announced_at = None
        self._renewed_at = self._monotonic()
        log().info(
            "login_complete",
            access_expires_at=iso(tokens.access_expires_at),
            refresh_expires_at=iso(tokens.refresh_expires_at),
            version=tokens.version,
        )
        return tokens

    # -- needs login ------------------------------------------------------------------------

    async def reload(self) -> None:
        """Adopt a newer usable set from the store (a login elsewhere); while still waiting for
        a login, repeat the needs-login log line every 10 minutes."""
        adopted = await self._state.poll_store()
        if adopted is None:
            return
        if adopted:
            self._announced_at = None
        elif (
            self._announced_at is None or time.monotonic() - self._announced_at >= self._state_ttl_s
        ):
            await self.announce("still waiting for a login")

    async def _enter_needs_login(self, reason: str) -> NeedsLoginError:
        self._state.require_login()
        await self.announce(reason)
        return NeedsLoginError(f"no usable MTT token ({reason}): run `mtt-router auth login`")

    async def announce(self, reason: str) -> None:
        """The one log line an operator needs: why, and where to start a login.

        No ``state`` is created here: an authorize URL in a log line would be a live login for
        anyone who can read the logs. :meth:`begin_login` makes one when a person asks for it.
        """
        self._announced_at = time.monotonic()
        log().error("needs_login", reason=reason, login=LOGIN_HINT)
