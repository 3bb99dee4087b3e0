"""Shared state behind small protocols: tokens, OAuth states, per-call claims, who is on a call.

``memory`` keeps it in the process (tokens also in a 0600 file); ``redis`` shares it between
replicas. The engine only sees these protocols, so tests and future stores swap in freely.
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from typing import Protocol

from router.mtt.tokens import TokenSet


class TokenStore(Protocol):
    """Where the OAuth token set lives."""

    async def load(self) -> TokenSet | None:
        """The current token set, or ``None`` when never authorised (or the store is unreadable)."""
        ...

    async def save(self, tokens: TokenSet, *, expected_version: int | None) -> bool:
        """Store ``tokens`` if the stored version still equals ``expected_version``.

        ``expected_version=None`` stores unconditionally (a fresh login). Returns False, storing
        nothing, when another writer got there first.
        """
        ...

    def refresh_lock(self) -> AbstractAsyncContextManager[None]:
        """Held while refreshing, so only one refresh runs (per process, or across replicas)."""
        ...


class OAuthStateStore(Protocol):
    """Single-use OAuth ``state`` values with a time to live."""

    async def put(self, state: str, ttl_s: float) -> None:
        """Remember ``state`` for ``ttl_s`` seconds."""
        ...

    async def redeem(self, state: str) -> bool:
        """Forget ``state``; True only the first time, and only before it expired."""
        ...


class CallClaims(Protocol):
    """The once-only claim that makes each parked call get exactly one decision."""

    async def claim(self, call_id: str, ttl_s: float) -> bool:
        """True for the first claimant of ``call_id`` within ``ttl_s``, False for any other."""
        ...


class Presence(Protocol):
    """Which workplaces are on a call, as far as call notifications tell."""

    async def set_busy(self, workplace: str, call_id: str, ttl_s: float) -> None:
        """Mark ``workplace`` on call ``call_id`` (expires after ``ttl_s`` as a safety net)."""
        ...

    async def set_free(self, workplace: str, call_id: str) -> None:
        """Mark the end of ``call_id`` on ``workplace``."""
        ...

    def busy(self) -> frozenset[str]:
        """Workplaces on a call now. Synchronous: read on the hot path from a local view."""
        ...
