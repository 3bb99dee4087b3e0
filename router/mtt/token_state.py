"""The token state: the current set, "needs login", and keeping the set in the store.

:class:`TokenState` is what every other part reads: the current :class:`TokenSet`, whether a
login is needed, the access token MTT last refused, a set obtained but not yet stored, the
gauges, and ``status()``. It persists sets (saving before use, and keeping a set the store
refused in memory until it can be saved) and adopts newer sets found in the store. It asks MTT
for nothing: refreshing and logging in are :mod:`router.mtt.token_grants`' job, and the
background loop (:mod:`router.mtt.refresher`) waits for a change through :meth:`TokenState.changed`.

No token is ever logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import structlog

from router.errors import StorageError
from router.metrics import Metrics
from router.mtt.tokens import TokenSet, next_refresh_at
from router.state.protocols import TokenStore

EXPIRY_SKEW_S = 30.0
"""Treat the access token as expired this much early (at most 10% of its lifetime), so a request
does not reach MTT just after the token died."""


def log() -> Any:
    """The token logger (``router.auth``), shared by the token modules."""
    # A fresh proxy per use: structlog's cache_logger_on_first_use would otherwise pin a
    # module-level logger to whatever configuration was active first.
    return structlog.get_logger("router.auth")


def iso(ts: float | None) -> str | None:
    """A Unix time as UTC ISO 8601 with a ``Z`` (for logs and ``status()``)."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def skew(tokens: TokenSet) -> float:
    """How early the access token of ``tokens`` counts as expired."""
    return min(EXPIRY_SKEW_S, 0.1 * max(tokens.access_expires_at - tokens.obtained_at, 0.0))


@dataclasses.dataclass(frozen=True, slots=True)
class ChangeWaiter:
    """Waits for the first change of the current set after :meth:`TokenState.changed` made it."""

    _event: asyncio.Event = dataclasses.field(repr=False)

    async def wait(self, timeout_s: float) -> bool:
        """True once the set has changed, False when ``timeout_s`` passes first."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self._event.wait()
        return self._event.is_set()


class TokenState:
    """The current token set and what is known about it; persistence of new sets."""

    def __init__(
        self, store: TokenStore, metrics: Metrics, *, clock: Callable[[], float] = time.time
    ) -> None:
        self._store = store
        self._metrics = metrics
        self._clock = clock
        self._tokens: TokenSet | None = None
        self._login_required = True  # until a usable set is loaded or obtained
        self._unsaved: TokenSet | None = None  # obtained but not yet persisted (store failed)
        self._refused_access: str | None = None  # an access token MTT answered 401 to
        self._store_unreadable = False  # logged once per store outage
        # Replaced at every change: a waiter holds the event of its time, which only that
        # change sets, so no change is missed and none is seen twice.
        self._next_change = asyncio.Event()

    def __repr__(self) -> str:
        return f"TokenState(needs_login={self.needs_login}, version={self.version})"

    # -- reading ----------------------------------------------------------------------------

    @property
    def tokens(self) -> TokenSet | None:
        """The current token set (its ``repr`` hides the tokens)."""
        return self._tokens

    @property
    def version(self) -> int | None:
        """Version of the current set, ``None`` without one."""
        return None if self._tokens is None else self._tokens.version

    @property
    def login_required(self) -> bool:
        """True once MTT refused the refresh token (or there never was a set), until a new set."""
        return self._login_required

    @property
    def refreshable(self) -> bool:
        """True when a refresh may be tried (there is a set, and MTT has not refused it)."""
        return self._tokens is not None and not self._login_required

    @property
    def needs_login(self) -> bool:
        """True when no usable token exists: an operator must authorise the integration again."""
        tokens = self._tokens
        if tokens is None:
            return True
        now = self._clock()
        if self.access_usable(tokens, now):
            return False
        return self._login_required or not tokens.refresh_valid(now)

    def access_usable(self, tokens: TokenSet, now: float) -> bool:
        """True while the access token of ``tokens`` is unexpired and MTT has not refused it."""
        return tokens.access_valid(now) and tokens.access_token != self._refused_access

    def cached_access_token(self) -> str | None:
        """The access token if it is good for a while yet; no I/O (the API client's fast path)."""
        tokens = self._tokens
        if (
            tokens is not None
            and self._clock() < tokens.access_expires_at - skew(tokens)
            and tokens.access_token != self._refused_access
        ):
            return tokens.access_token
        return None

    def now(self) -> float:
        """The state's clock (Unix seconds; injectable for tests)."""
        return self._clock()

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
            "access_valid": self.access_usable(tokens, now),
            "access_expires_at": iso(tokens.access_expires_at),
            "refresh_expires_at": iso(tokens.refresh_expires_at),
            "next_refresh_at": None if needs_login else iso(next_refresh_at(tokens)),
            "obtained_at": iso(tokens.obtained_at),
            "version": tokens.version,
            "persisted": self._unsaved is None,
        }

    def update_gauges(self) -> None:
        """Set ``needs_login`` and the expiry gauges from the current state."""
        self._metrics.needs_login.set(1 if self.needs_login else 0)
        if self._tokens is not None:
            self._metrics.token_expiry.labels("access").set(self._tokens.access_expires_at)
            self._metrics.token_expiry.labels("refresh").set(self._tokens.refresh_expires_at)

    def changed(self) -> ChangeWaiter:
        """A waiter for the next change of the current set (adopted, refreshed, logged in)."""
        return ChangeWaiter(self._next_change)

    # -- changing ---------------------------------------------------------------------------

    def adopt(self, tokens: TokenSet) -> None:
        """Make ``tokens`` the current set (usable: no login required) and wake the waiters."""
        self._tokens = tokens
        self._login_required = False
        self.update_gauges()
        event, self._next_change = self._next_change, asyncio.Event()
        event.set()

    def require_login(self) -> None:
        """MTT refused the refresh token (or there is none): only a new set helps now."""
        self._login_required = True
        self.update_gauges()

    def refuse_access(self, access_token: str) -> None:
        """MTT answered 401 to ``access_token``: never hand it out again."""
        self._refused_access = access_token

    # -- the store --------------------------------------------------------------------------

    async def load(self) -> TokenSet | None:
        """Read the store once and adopt what it holds."""
        stored = await self._store.load()
        if stored is not None:
            self.adopt(stored)
            now = self._clock()
            self._login_required = not (stored.access_valid(now) or stored.refresh_valid(now))
        self.update_gauges()
        return stored

    async def open(self) -> None:
        """:meth:`load`, where a store that does not answer (Redis down) is logged, not raised:
        the daemon then starts without tokens and a later :meth:`poll_store` picks them up."""
        try:
            await self.load()
        except StorageError as exc:
            self._store_unreadable = True
            log().error("token_store_unavailable", error=str(exc))

    async def poll_store(self) -> bool | None:
        """Adopt a newer usable set from the store (a login elsewhere): True if one was adopted,
        False if there was none, ``None`` if the store could not be read."""
        try:
            stored = await self._store.load()
        except Exception as exc:  # any store failure: this poll is skipped, the next may work
            if not self._store_unreadable:  # one line per outage, not one per poll
                self._store_unreadable = True
                log().warning("token_store_unreadable", error_type=type(exc).__name__)
            return None
        if self._store_unreadable:
            self._store_unreadable = False
            log().info("token_store_readable_again")
        now = self._clock()
        held = self._tokens
        if (
            stored is None
            or (held is not None and stored.version <= held.version)
            or not (stored.access_valid(now) or stored.refresh_valid(now))
        ):
            return False
        self.adopt(stored)
        log().info(
            "tokens_loaded", version=stored.version, access_expires_at=iso(stored.access_expires_at)
        )
        return True

    async def save_login(self, tokens: TokenSet) -> None:
        """Store the set a login obtained and adopt it; if the store fails, adopt it anyway (it
        is saved before its refresh token is used) and raise, so the caller hears of it."""
        try:
            await self._store.save(tokens, expected_version=None)
        except Exception:  # whatever the store raised, the set MTT just issued must not be lost
            self._unsaved = tokens
            self.adopt(tokens)
            raise
        self._unsaved = None
        self.adopt(tokens)

    async def save_refreshed(self, tokens: TokenSet, expected: int) -> None:
        """Persist a refreshed set before use, then adopt it; if the store fails, keep it in
        memory and persist it later (:meth:`persist_unsaved`)."""
        try:
            if not await self._store.save(tokens, expected_version=expected):
                # A writer without our lock got in between; MTT just vouched for ours, so it wins.
                stored = await self._store.load()
                base = None if stored is None else stored.version
                tokens = dataclasses.replace(tokens, version=max(base or 0, expected) + 1)
                if not await self._store.save(tokens, expected_version=base):
                    raise RuntimeError("token store kept changing under the refresh lock")
        except Exception as exc:  # any store failure: MTT rotated already, so use the set anyway
            log().error("tokens_not_persisted", error_type=type(exc).__name__, error=str(exc))
            self._unsaved = tokens
        self.adopt(tokens)

    async def persist_unsaved(self) -> None:
        """Save the set the store refused earlier, unless a newer one was stored since."""
        unsaved = self._unsaved
        if unsaved is None:
            return
        stored = await self._store.load()
        if stored is not None and stored.version >= unsaved.version:
            self._unsaved = None  # something newer was stored since; the caller adopts it
            return
        if await self._store.save(
            unsaved, expected_version=None if stored is None else stored.version
        ):
            self._unsaved = None
            log().info("tokens_persisted", version=unsaved.version)
