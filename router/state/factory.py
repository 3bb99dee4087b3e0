"""Build the stores the configuration asks for: the one place that knows which backend is which.

Everything else sees :class:`Stores`: one implementation of each seam of
:mod:`router.state.protocols`, and ``None`` for a capability the backend lacks.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from router.config import Config
from router.metrics import Metrics
from router.sources import LEARNED_SPACE
from router.state.learned_file import LearnedFile, learned_path
from router.state.memory import (
    FileTokenStore,
    MemoryCallStore,
    MemoryOAuthStates,
    MemoryPresence,
    MemoryReroutes,
)
from router.state.protocols import (
    CallStore,
    ClientStore,
    LearnedStore,
    OAuthStateStore,
    Presence,
    Reroutes,
    SharedDirectory,
    SharedRules,
    TokenStore,
)
from router.state.redis import open_redis_stores
from router.state.redis_conn import redact_url


async def _always_up() -> bool:
    return True


@dataclass
class Stores:
    """The state backends of one process; :meth:`aclose` releases whatever they hold."""

    description: str
    """What backs them, for ``/status`` (``memory``, or the Redis URL without its password)."""
    tokens: TokenStore
    states: OAuthStateStore
    calls: CallStore
    presence: Presence
    reroutes: Reroutes = field(default_factory=MemoryReroutes)
    """No-answer re-routes: the "answered" mark and the hop claims (rules ``no_answer``)."""
    clients: ClientStore | None = None
    """Per-client edits (``mtt-router clients``, ``/clients/{number}``); a shared storage only."""
    shared_rules: SharedRules | None = None
    """Rules pushed with ``mtt-router rules push`` (``rules.source: redis``)."""
    shared_directory: SharedDirectory | None = None
    """The directory one replica fetched, adopted by the others."""
    learned: LearnedStore | None = None
    """What rules ``learn`` remembered (Redis, or ``<tokens_file>.learned.json``)."""
    shared: bool = False
    """True when other processes (replicas) share this state: a login may land on any of them."""
    pinger: Callable[[], Awaitable[bool]] = _always_up
    closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    async def ping(self) -> bool:
        """True when the storage answers (memory always does)."""
        return await self.pinger()

    async def aclose(self) -> None:
        """Close the backends (a Redis pool, for instance), last opened first."""
        while self.closers:
            await self.closers.pop()()


async def open_stores(
    config: Config, metrics: Metrics | None = None, *, background: bool = False
) -> Stores:
    """The stores for ``config.storage``: ``memory`` (tokens in ``tokens_file``) or Redis.

    ``background`` (the daemon): memory storage writes what it learns to its file and follows
    the file's edits by commands.
    """
    if config.uses_redis:
        redis = await open_redis_stores(config, metrics if metrics is not None else Metrics())
        return Stores(
            description=redact_url(config.storage),
            tokens=redis.tokens,
            states=redis.states,
            calls=redis.calls,
            presence=redis.presence,
            reroutes=redis.reroutes,
            clients=redis.clients,
            shared_rules=redis.rules,
            shared_directory=redis.directory,
            learned=redis.learned,
            shared=True,
            pinger=redis.ping,
            closers=[redis.aclose],
        )
    if metrics is not None:
        metrics.storage_up.set(1)  # memory always answers; 0 would page someone for nothing
    learned = LearnedFile(learned_path(config.tokens_file))
    await asyncio.to_thread(learned.load)
    if background:
        learned.start()
    return Stores(
        description="memory",
        tokens=FileTokenStore(config.tokens_file),
        states=MemoryOAuthStates(),
        calls=MemoryCallStore(spaces={LEARNED_SPACE: learned}),
        presence=MemoryPresence(),
        reroutes=MemoryReroutes(),
        learned=learned,
        closers=[learned.aclose],
    )
