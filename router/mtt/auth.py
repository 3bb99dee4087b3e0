"""The token manager: one usable access token, always, or a clear "needs login" state.

* The access token is refreshed ahead of time (at 80% of its lifetime) by an owned background task,
  which also makes sure the 3-day refresh token never lapses while the daemon runs.
* Every refresh is single-flight: however many callers find the token expired (or get a 401) at
  once, one request reaches MTT and all of them get its answer. The refresh runs in a task owned by
  the manager, so a caller whose own deadline passes does not cancel it half-way (which could lose
  a refresh token that MTT has already rotated).
* A refreshed set is saved to the store *before* anyone uses it; the store's ``refresh_lock`` and
  versioned compare-and-set let several processes (the daemon and a CLI command, or replicas on
  Redis) share one token set: who finds a newer set in the store adopts it instead of refreshing.
* A refused refresh token (``invalid_grant``) or none at all puts the manager in "needs login":
  :class:`NeedsLoginError` for callers, the ``mtt_router_needs_login`` gauge at 1, and a log line
  with the authorize URL to open. It is left by a login, or when a newer set appears in the store.

No token is ever logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import secrets
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import structlog

from router.errors import (
    InvalidGrantError,
    InvalidStateError,
    NeedsLoginError,
    StorageError,
    UpstreamError,
)
from router.metrics import Metrics
from router.mtt.oauth import OAuthClient
from router.mtt.refresher import Refresher, next_refresh_at
from router.mtt.tokens import TokenResponse, TokenSet
from router.state import OAuthStateStore, TokenStore

STATE_TTL_S = 600.0
"""An OAuth ``state`` (and so an authorize URL) is good for 10 minutes, once."""
EXPIRY_SKEW_S = 30.0
"""Treat the access token as expired this much early (at most 10% of its lifetime), so a request
does not reach MTT just after the token died."""
CLOSE_WAIT_S = 10.0
"""On close, an in-flight refresh may finish (its answer must be saved) for this long."""


def _log() -> Any:
    # A fresh proxy per use: structlog's cache_logger_on_first_use would otherwise pin a
    # module-level logger to whatever configuration was active first.
    return structlog.get_logger("router.auth")


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _consume(task: asyncio.Task[Any]) -> None:
    # Every waiter may have given up (deadline passed); fetch the outcome so asyncio does not warn.
    if not task.cancelled():
        task.exception()


class TokenManager:
    """Owns the token set: loading, proactive and on-demand refresh, login, needs-login state."""

    def __init__(
        self,
        oauth: OAuthClient,
        store: TokenStore,
        states: OAuthStateStore,
        metrics: Metrics,
        *,
        clock: Callable[[], float] = time.time,
        poll_s: float = 15.0,
        refresh_timeout_s: float = 10.0,
    ) -> None:
        self._oauth = oauth
        self._store = store
        self._states = states
        self._metrics = metrics
        self._clock = clock
        self._poll_s = poll_s
        self._refresh_timeout_s = refresh_timeout_s
        self._tokens: TokenSet | None = None
        self._login_required = True  # until a usable set is loaded or obtained
        self._unsaved: TokenSet | None = None  # obtained but not yet persisted (store failed)
        self._refused_access: str | None = None  # an access token MTT answered 401 to
        self._store_unreadable = False  # logged once per store outage
        self._announced_at: float | None = None
        self._refresh_task: asyncio.Task[TokenSet] | None = None
        self._changed = asyncio.Event()
        self._refresher: Refresher | None = None

    def __repr__(self) -> str:
        return f"TokenManager(needs_login={self.needs_login}, version={self.version})"

    # -- state ------------------------------------------------------------------------------

    @property
    def tokens(self) -> TokenSet | None:
        """The current token set (its ``repr`` hides the tokens)."""
        return self._tokens

    @property
    def version(self) -> int | None:
        """Version of the current set, ``None`` without one."""
        return None if self._tokens is None else self._tokens.version

    @property
    def needs_login(self) -> bool:
        """True when no usable token exists: an operator must authorise the integration again."""
        tokens = self._tokens
        if tokens is None:
            return True
        now = self._clock()
        if self._access_usable(tokens, now):
            return False
        return self._login_required or not tokens.refresh_valid(now)

    def _access_usable(self, tokens: TokenSet, now: float) -> bool:
        return tokens.access_valid(now) and tokens.access_token != self._refused_access

    def status(self) -> dict[str, Any]:
        """Token state for ``/status`` and ``auth status``: expiry times in UTC, never a token."""
        tokens = self._tokens
        needs_login = self.needs_login
        if tokens is None:
            return {"authorized": False, "needs_login": True, "version": None}
        now = self._clock()
        return {
            "authorized": not needs_login,
            "needs_login": needs_login,
            "access_valid": self._access_usable(tokens, now),
            "access_expires_at": _iso(tokens.access_expires_at),
            "refresh_expires_at": _iso(tokens.refresh_expires_at),
            "next_refresh_at": None if needs_login else _iso(next_refresh_at(tokens)),
            "obtained_at": _iso(tokens.obtained_at),
            "version": tokens.version,
            "persisted": self._unsaved is None,
        }

    def cached_access_token(self) -> str | None:
        """The access token if it is good for a while yet; no I/O (the API client's fast path)."""
        tokens = self._tokens
        if (
            tokens is not None
            and self._clock() < tokens.access_expires_at - _skew(tokens)
            and tokens.access_token != self._refused_access
        ):
            return tokens.access_token
        return None

    # -- lifecycle --------------------------------------------------------------------------

    async def load(self) -> TokenSet | None:
        """Read the store once (a CLI command needs no background refresher)."""
        stored = await self._store.load()
        if stored is not None:
            self._adopt(stored)
            now = self._clock()
            self._login_required = not (stored.access_valid(now) or stored.refresh_valid(now))
        self.update_gauges()
        return stored

    async def start(self) -> None:
        """Load the store and start the proactive refresher (stopped by :meth:`close`).

        A store that does not answer (Redis down) is not fatal: the daemon starts without tokens
        (not ready) and the refresher's polling picks the set up when the store is back.
        """
        try:
            await self.load()
        except StorageError as exc:
            self._store_unreadable = True
            _log().error("token_store_unavailable", error=str(exc))
        if self.needs_login:
            await self._announce("no usable tokens stored")
        self._refresher = Refresher(self, self._changed, poll_s=self._poll_s)
        self._refresher.start()

    async def close(self) -> None:
        """Stop the refresher; let an in-flight refresh finish (briefly) so its answer is saved."""
        refresher, self._refresher = self._refresher, None
        if refresher is not None:
            await refresher.close()
        task = self._refresh_task
        if task is not None and not task.done():
            await asyncio.wait((task,), timeout=CLOSE_WAIT_S)
            if not task.done():
                task.cancel("token manager closing")
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    # -- tokens for callers -----------------------------------------------------------------

    async def access_token(self) -> str:
        """A usable access token, refreshing first (single-flight) if it has expired."""
        token = self.cached_access_token()
        if token is not None:
            return token
        if self._tokens is None or self._login_required:
            # No I/O here: a login, or the refresher's poll of the store, leaves this state.
            if self._tokens is not None and self._access_usable(self._tokens, self._clock()):
                return self._tokens.access_token
            raise NeedsLoginError("no usable MTT token: run `mtt-router auth login`")
        tokens = self._tokens
        if self._access_usable(tokens, self._clock()):
            # Inside the early-expiry margin but still valid: refresh in the background (one
            # shared task) and use this token, rather than make a parked call wait on OAuth.
            self._start_refresh()
            return tokens.access_token
        return (await self._join_refresh()).access_token

    async def refresh_after_401(self, used_token: str) -> str:
        """A token other than ``used_token`` (which MTT refused); one refresh for all callers."""
        tokens = self._tokens
        if tokens is not None and tokens.access_token != used_token:
            return tokens.access_token  # someone already refreshed
        self._refused_access = used_token
        if tokens is None or self._login_required:
            self.update_gauges()
            raise NeedsLoginError("no usable MTT token: run `mtt-router auth login`")
        return (await self._join_refresh()).access_token

    # -- login ------------------------------------------------------------------------------

    async def begin_login(self) -> str:
        """A fresh single-use ``state`` (valid 10 min) and the authorize URL that carries it."""
        state = secrets.token_urlsafe(24)
        await self._states.put(state, STATE_TTL_S)
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
            newest = max((s.version for s in (stored, self._tokens) if s is not None), default=0)
            tokens = TokenSet.from_response(answer, now=self._clock(), version=newest + 1)
            try:
                await self._store.save(tokens, expected_version=None)
            except Exception:
                # Usable now, persisted later (before its refresh token is ever used).
                self._unsaved = tokens
                self._adopt(tokens)
                raise
            self._unsaved = None
            self._adopt(tokens)
        self._announced_at = None
        _log().info(
            "login_complete",
            access_expires_at=_iso(tokens.access_expires_at),
            refresh_expires_at=_iso(tokens.refresh_expires_at),
            version=tokens.version,
        )
        return tokens

    # -- refresh ----------------------------------------------------------------------------

    @property
    def refreshable(self) -> bool:
        """True when a refresh may be tried (there is a set, and MTT has not refused it)."""
        return self._tokens is not None and not self._login_required

    async def refresh(self) -> TokenSet:
        """Refresh now, or join the refresh already running (one request for all callers)."""
        return await self._join_refresh()

    def _start_refresh(self) -> asyncio.Task[TokenSet]:
        task = self._refresh_task
        if task is None or task.done():
            task = asyncio.create_task(self._refresh(), name="mtt-token-refresh")
            task.add_done_callback(_consume)
            self._refresh_task = task
        return task

    async def _join_refresh(self) -> TokenSet:
        task = self._start_refresh()
        # asyncio.wait, not await: a caller cancelled by its deadline must not cancel the refresh.
        await asyncio.wait((task,))
        return task.result()

    async def _refresh(self) -> TokenSet:
        async with self._store.refresh_lock():
            if self._unsaved is not None:
                await self._persist_unsaved()
            held = self._tokens
            stored = await self._store.load()
            now = self._clock()
            if stored is not None and (held is None or stored.version > held.version):
                self._adopt(stored)  # another process refreshed (or logged in) meanwhile
                if now < stored.access_expires_at - _skew(stored):
                    self._metrics.token_refreshes.labels("skipped").inc()
                    _log().info(
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
                    self._adopt(again)
                    _log().info(
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
                _log().warning(
                    "token_refresh_failed", error=str(exc), error_type=type(exc).__name__
                )
                raise
            tokens = self._next_set(held, answer)
            await self._save_refreshed(tokens, held.version)
            self._metrics.token_refreshes.labels("ok").inc()
            _log().info(
                "token_refreshed",
                access_expires_at=_iso(tokens.access_expires_at),
                refresh_expires_at=_iso(tokens.refresh_expires_at),
                rotated=tokens.refresh_token != held.refresh_token,
                version=tokens.version,
            )
            return tokens

    def _next_set(self, held: TokenSet, answer: TokenResponse) -> TokenSet:
        tokens = TokenSet.from_response(answer, now=self._clock(), version=held.version + 1)
        if not tokens.refresh_token or tokens.refresh_token == held.refresh_token:
            # Not rotated: the old refresh token keeps the lifetime it was issued with.
            tokens = dataclasses.replace(
                tokens,
                refresh_token=held.refresh_token,
                refresh_expires_at=held.refresh_expires_at,
            )
        return tokens

    async def _save_refreshed(self, tokens: TokenSet, expected: int) -> None:
        """Persist before use; if the store fails, keep it in memory and persist it later."""
        try:
            if not await self._store.save(tokens, expected_version=expected):
                # A writer without our lock got in between; MTT just vouched for ours, so it wins.
                stored = await self._store.load()
                base = None if stored is None else stored.version
                tokens = dataclasses.replace(tokens, version=max(base or 0, expected) + 1)
                if not await self._store.save(tokens, expected_version=base):
                    raise RuntimeError("token store kept changing under the refresh lock")
        except Exception as exc:
            _log().error("tokens_not_persisted", error_type=type(exc).__name__, error=str(exc))
            self._unsaved = tokens
        self._adopt(tokens)

    async def _persist_unsaved(self) -> None:
        unsaved = self._unsaved
        assert unsaved is not None
        stored = await self._store.load()
        if stored is not None and stored.version >= unsaved.version:
            self._unsaved = None  # something newer was stored since; adopt it below
            return
        if await self._store.save(
            unsaved, expected_version=None if stored is None else stored.version
        ):
            self._unsaved = None
            _log().info("tokens_persisted", version=unsaved.version)

    async def _enter_needs_login(self, reason: str) -> NeedsLoginError:
        self._login_required = True
        self.update_gauges()
        await self._announce(reason)
        return NeedsLoginError(f"no usable MTT token ({reason}): run `mtt-router auth login`")

    async def _announce(self, reason: str) -> None:
        """The one log line an operator needs: why, and the URL to open (valid 10 minutes)."""
        self._announced_at = time.monotonic()
        try:
            url: str | None = await self.begin_login()
        except Exception as exc:
            url = None
            _log().warning("oauth_state_not_stored", error_type=type(exc).__name__)
        _log().error(
            "needs_login",
            reason=reason,
            authorize_url=url,
            hint="open authorize_url within 10 minutes (or GET /oauth/start on the admin listener, "
            "or run `mtt-router auth login`) to authorise the integration again",
        )

    def _adopt(self, tokens: TokenSet) -> None:
        self._tokens = tokens
        self._login_required = False
        self.update_gauges()
        self._changed.set()

    def now(self) -> float:
        """The manager's clock (Unix seconds; injectable for tests)."""
        return self._clock()

    def update_gauges(self) -> None:
        """Set ``needs_login`` and the expiry gauges from the current state."""
        self._metrics.needs_login.set(1 if self.needs_login else 0)
        if self._tokens is not None:
            self._metrics.token_expiry.labels("access").set(self._tokens.access_expires_at)
            self._metrics.token_expiry.labels("refresh").set(self._tokens.refresh_expires_at)

    # -- while waiting for a login ---------------------------------------------------------

    async def reload(self) -> None:
        """Adopt a newer usable set from the store (a login elsewhere); while still waiting for
        a login, repeat the needs-login log line every 10 minutes (its URL's lifetime)."""
        try:
            stored = await self._store.load()
        except Exception as exc:
            if not self._store_unreadable:  # one line per outage, not one per poll
                self._store_unreadable = True
                _log().warning("token_store_unreadable", error_type=type(exc).__name__)
            return
        if self._store_unreadable:
            self._store_unreadable = False
            _log().info("token_store_readable_again")
        now = self._clock()
        held = self._tokens
        if (
            stored is not None
            and (held is None or stored.version > held.version)
            and (stored.access_valid(now) or stored.refresh_valid(now))
        ):
            self._adopt(stored)
            self._announced_at = None
            _log().info(
                "tokens_loaded",
                version=stored.version,
                access_expires_at=_iso(stored.access_expires_at),
            )
        elif self._announced_at is None or time.monotonic() - self._announced_at >= STATE_TTL_S:
            await self._announce("still waiting for a login")


def _skew(tokens: TokenSet) -> float:
    return min(EXPIRY_SKEW_S, 0.1 * max(tokens.access_expires_at - tokens.obtained_at, 0.0))
