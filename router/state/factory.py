"""Build the stores the configuration asks for: the one place that knows which backend is which."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from router.config import Config
from router.metrics import Metrics
from router.state import CallClaims, OAuthStateStore, Presence, TokenStore
from router.state.memory import (
    FileTokenStore,
    MemoryCallClaims,
    MemoryOAuthStates,
    MemoryPresence,
)
from router.state.redis import RedisStores, open_redis_stores


async def _always_up() -> bool:
    return True


@dataclass
class Stores:
    """The state backends of one process; :meth:`aclose` releases whatever they hold."""

    tokens: TokenStore
    states: OAuthStateStore
    claims: CallClaims
    presence: Presence
    pinger: Callable[[], Awaitable[bool]] = _always_up
    closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    redis: RedisStores | None = None
    """With ``storage: redis://``: the shared rules, client map and directory stores too."""

    async def ping(self) -> bool:
        """True when the storage answers (memory always does)."""
        return await self.pinger()

    async def aclose(self) -> None:
        """Close the backends (a Redis pool, for instance), last opened first."""
        while self.closers:
            await self.closers.pop()()


async def open_stores(config: Config, metrics: Metrics | None = None) -> Stores:
    """The stores for ``config.storage``: ``memory`` (tokens in ``tokens_file``) or Redis."""
    if config.uses_redis:
        redis = await open_redis_stores(config, metrics if metrics is not None else Metrics())
        return Stores(
            tokens=redis.tokens,
            states=redis.states,
            claims=redis.claims,
            presence=redis.presence,
            pinger=redis.ping,
            closers=[redis.aclose],
            redis=redis,
        )
    if metrics is not None:
        metrics.storage_up.set(1)  # memory always answers; 0 would page someone for nothing
    return Stores(
        tokens=FileTokenStore(config.tokens_file),
        states=MemoryOAuthStates(),
        claims=MemoryCallClaims(),
        presence=MemoryPresence(),
    )
