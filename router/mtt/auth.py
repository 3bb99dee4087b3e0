"""The token manager: one usable access token, always, or a clear "needs login" state.

:class:`TokenManager` is the one object callers hold; it only composes three parts:

* :class:`~router.mtt.token_state.TokenState`: the current set, "needs login", persistence,
  gauges and ``status()``;
* :class:`~router.mtt.token_grants.TokenGrants`: the single-flight refresh (saved before use,
  shared across processes through the store), the 401 path and the login;
* :class:`~router.mtt.refresher.Refresher`: the background task that refreshes at 80% of the
  access token's life and keeps the refresh token alive (only between :meth:`TokenManager.start`
  and :meth:`TokenManager.close`).

No token is ever logged.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from router.metrics import Metrics
from router.mtt.oauth import OAuthClient
from router.mtt.refresher import Refresher
from router.mtt.token_grants import MIN_REFRESH_INTERVAL_S, STATE_TTL_S, TokenGrants
from router.mtt.token_state import TokenState
from router.mtt.tokens import TokenSet
from router.state.protocols import OAuthStateStore, TokenStore

__all__ = ["STATE_TTL_S", "TokenManager"]


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
        min_refresh_interval_s: float = MIN_REFRESH_INTERVAL_S,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.state = TokenState(store, metrics, clock=clock)
        # STATE_TTL_S is read here, not in TokenGrants, so that one setting (or a test's patch of
        # this module) covers both the URLs handed out and how often the notice repeats.
        self.grants = TokenGrants(
            self.state,
            oauth,
            store,
            states,
            metrics,
            refresh_timeout_s=refresh_timeout_s,
            state_ttl_s=STATE_TTL_S,
            min_refresh_interval_s=min_refresh_interval_s,
            monotonic=monotonic,
        )
        self._poll_s = poll_s
        self._refresher: Refresher | None = None

    def __repr__(self) -> str:
        return f"TokenManager(needs_login={self.needs_login}, version={self.version})"

    async def start(self) -> None:
        """Load the store and start the proactive refresher (stopped by :meth:`close`).

        A store that does not answer (Redis down) is not fatal: the daemon starts without tokens
        (not ready) and the refresher's polling picks the set up when the store is back.
        """
        await self.state.open()
        if self.state.needs_login:
            await self.grants.announce("no usable tokens stored")
        self._refresher = Refresher(self.state, self.grants, poll_s=self._poll_s)
        self._refresher.start()

    async def close(self) -> None:
        """Stop the refresher; let an in-flight refresh finish (briefly) so its answer is saved."""
        refresher, self._refresher = self._refresher, None
        if refresher is not None:
            await refresher.close()
        await self.grants.close()

    # -- delegated to the state -------------------------------------------------------------

    @property
    def tokens(self) -> TokenSet | None:
        """The current token set (its ``repr`` hides the tokens)."""
        return self.state.tokens

    @property
    def version(self) -> int | None:
        """Version of the current set, ``None`` without one."""
        return self.state.version

    @property
    def needs_login(self) -> bool:
        """True when no usable token exists: an operator must authorise the integration again."""
        return self.state.needs_login

    @property
    def refreshable(self) -> bool:
        """True when a refresh may be tried (there is a set, and MTT has not refused it)."""
        return self.state.refreshable

    def status(self) -> dict[str, Any]:
        """Token state for ``/status`` and ``auth status``: expiry times in UTC, never a token."""
        return self.state.status()

    def cached_access_token(self) -> str | None:
        """The access token if it is good for a while yet; no I/O (the API client's fast path)."""
        return self.state.cached_access_token()

    async def load(self) -> TokenSet | None:
        """Read the store once (a CLI command needs no background refresher)."""
        return await self.state.load()

    def now(self) -> float:
        """The manager's clock (Unix seconds; injectable for tests)."""
        return self.state.now()

    def update_gauges(self) -> None:
        """Set ``needs_login`` and the expiry gauges from the current state."""
        self.state.update_gauges()

    # -- delegated to the grants ------------------------------------------------------------

    async def access_token(self) -> str:
        """A usable access token, refreshing first (single-flight) if it has expired."""
        return await self.grants.access_token()

    async def refresh_after_401(self, used_token: str) -> str:
        """A token other than ``used_token`` (which MTT refused); one refresh for all callers."""
        return await self.grants.refresh_after_401(used_token)

    async def refresh(self) -> TokenSet:
        """Refresh now, or join the refresh already running (one request for all callers)."""
        return await self.grants.refresh()

    async def begin_login(self) -> str:
        """A fresh single-use ``state`` (valid 10 min) and the authorize URL that carries it."""
        return await self.grants.begin_login()

    async def complete_login(self, code: str, state: str) -> TokenSet:
        """Finish the OAuth callback: check ``state``, exchange ``code``, store the new set."""
        return await self.grants.complete_login(code, state)

    async def reload(self) -> None:
        """Adopt a newer usable set from the store; remind the operator while a login is due."""
        return await self.grants.reload()
