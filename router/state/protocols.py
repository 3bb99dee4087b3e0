"""Every storage seam of the daemon, in one place: what a component may ask of the storage.

Two backends implement them: :mod:`router.state.memory` (one process; tokens in a 0600 file) and
the ``redis_*`` modules (shared by replicas). :class:`router.state.factory.Stores` hands out one
implementation of each, and ``None`` for the capabilities a backend does not have (per-client edits,
shared rules, a shared directory), so no component asks which backend it runs on.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, NamedTuple, Protocol

from router.context import Read
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


class Gathered(NamedTuple):
    """The answer of :meth:`CallStore.claim_and_read` (a NamedTuple: one per call, cheap)."""

    claimed: bool
    """True for the first claimant of the call id (this process decides the call)."""
    values: Mapping[Read, str | None]
    """The answer to each read; a read missing here was not answered (storage down, no cache)."""


class CallStore(Protocol):
    """The once-only claim of a parked call and the reads its decision needs, in one step."""

    async def claim_and_read(self, call_id: str, ttl_s: float, reads: Sequence[Read]) -> Gathered:
        """Claim ``call_id`` for ``ttl_s`` and answer ``reads``: one round trip at most.

        Never raises for a storage failure: the claim falls back to this process's memory and
        the unanswered reads are left out of :attr:`Gathered.values`.
        """
        ...


class Presence(Protocol):
    """Which workplaces are on a call, as far as call notifications tell.

    A change counts in :meth:`busy` of this process at once; a shared backend tells the other
    replicas a moment later (Redis: in batches, in order)."""

    async def set_busy(self, workplace: str, call_id: str, ttl_s: float) -> None:
        """Mark ``workplace`` on call ``call_id`` (expires after ``ttl_s`` as a safety net)."""
        ...

    async def set_free(self, workplace: str, call_id: str) -> None:
        """Mark the end of ``call_id`` on ``workplace``."""
        ...

    def busy(self) -> frozenset[str]:
        """Workplaces on a call now. Synchronous: read on the hot path from a local view."""
        ...


class ClientStore(Protocol):
    """Per-client edits (caller number -> personal manager) kept outside the rules file."""

    async def get(self, number: str) -> str | None:
        """The manager id for a caller number (any spelling), or ``None``."""
        ...

    async def set(self, number: str, manager: str) -> str:
        """Make ``manager`` the caller's personal manager; returns the normalised number."""
        ...

    async def delete(self, number: str) -> bool:
        """Forget the caller; True if it was in the map."""
        ...


class Learned(NamedTuple):
    """One learned entry: the caller's manager, and when it was learned and expires (epoch s)."""

    manager: str
    learned_at: float
    expires_at: float


class LearnedStore(Protocol):
    """What rules ``learn`` remembered: caller number -> manager id, each entry with an expiry.

    The decision reads it through :meth:`CallStore.claim_and_read` (space ``learned``), in the
    same step as the claim; this protocol is how lessons are written and how commands look.
    """

    def remember(self, number: str, manager: str, ttl_s: float) -> None:
        """Learn ``manager`` for the normalised ``number`` for ``ttl_s``: never blocks, never
        raises (written in the background; a storage failure is logged)."""
        ...

    async def get(self, number: str) -> Learned | None:
        """The live entry of the normalised ``number``, or ``None``."""
        ...

    async def forget(self, number: str) -> bool:
        """Drop the entry of the normalised ``number``; True if there was a live one."""
        ...


class PushedRules(NamedTuple):
    """One pushed rules version: its number, its text, its ``clients_file`` content (if any)."""

    version: int
    text: str
    clients: str | None
    clients_file: str = ""
    """The ``clients_file`` as the rules name it (where ``rules pull`` writes ``clients``)."""


class SharedRules(Protocol):
    """Rules versions pushed with ``mtt-router rules push``, followed by every replica."""

    async def pull(self) -> PushedRules | None:
        """The current version, or ``None`` before the first push."""
        ...

    async def watch(
        self, callback: Callable[[int], Awaitable[None]], *, known_version: int | None = None
    ) -> None:
        """Call ``callback(version)`` for every new version, until cancelled."""
        ...


class SharedDirectory(Protocol):
    """The PBX directory (numbers, workplaces) as one replica fetched it, for the others."""

    async def save(self, kind: str, data: Any) -> int:
        """Store ``data`` as the newest ``kind`` (``numbers``, ``workplaces``, ``terminals``)."""
        ...

    async def load(self, kind: str) -> Any:
        """The stored snapshot of ``kind`` (with ``.data``), or ``None``."""
        ...

    async def watch(self, callback: Callable[[str, int], Awaitable[None]]) -> None:
        """Call ``callback(kind, version)`` for every saved snapshot, until cancelled."""
        ...


class Reroutes(Protocol):
    """No-answer re-routes (rules ``no_answer``), shared by replicas: whether a transferred call
    was answered, and which re-route ("hop") of it was claimed.

    The check "no ``connected`` seen for the call" and the claim of a hop are one atomic step, so
    two replicas never both re-route a call and none re-routes a call that was answered.
    """

    async def mark_answered(self, call_id: str) -> None:
        """A ``connected`` was seen for ``call_id``: no hop of it may be claimed from now on.

        Raises :class:`~router.errors.StorageError` when the storage did not take it.
        """
        ...

    async def claim_hop(self, call_id: str, hop: int) -> bool:
        """Claim re-route number ``hop`` (1, 2, ...) of ``call_id``: True only when no
        ``connected`` was marked for the call and nobody claimed this hop (or a later one).

        Raises :class:`~router.errors.StorageError` when the storage cannot answer: no re-route
        then (a re-route that might be the second one, or come after an answer, is worse than
        none).
        """
        ...
