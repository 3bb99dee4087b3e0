"""What rules ``learn`` remembered, in Redis: shared by every replica, one key per caller.

Keys (``P`` is ``storage_prefix``):

- ``P learned:<number>`` — string ``"<manager id> <learned at, ms since the epoch>"`` with a TTL
  of ``learn.ttl_days`` (``SET ... PX``): Redis itself forgets an entry when it expires.

A key per number (not one hash) because Redis 7.0 has no per-field expiry: the decision's read is
one ``GET`` in the pipelined round trip that claims the call (:mod:`router.state.redis_claims`,
a key space), never a round trip of its own. Not cached locally: the claim costs that round trip
anyway, and a lesson learned on one replica must count on the next call whichever replica
decides it.

Lessons are written in the background (:meth:`RedisLearned.remember` never blocks the call
notification that taught it); at most :data:`MAX_PENDING` writes wait at once (Redis hung: the
rest are dropped and logged), and :meth:`RedisLearned.aclose` waits a little for the last ones.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import structlog

from router.errors import StorageError
from router.log_limit import LineLimiter
from router.state.protocols import Learned
from router.state.redis_conn import RedisOps

log = structlog.get_logger("router.state")

MAX_PENDING = 256
"""Lesson writes in flight at once; beyond that a lesson is dropped (logged)."""
CLOSE_WAIT_S = 2.0
"""How long closing waits for the writes in flight."""


class RedisLearned:
    """:class:`~router.state.protocols.LearnedStore` in Redis, and the ``learned`` key space of
    :class:`~router.state.redis_claims.RedisCallStore`."""

    def __init__(self, ops: RedisOps, *, max_pending: int = MAX_PENDING) -> None:
        self._ops = ops
        self._max_pending = max_pending
        self._pending: set[asyncio.Task[None]] = set()
        self._dropped = LineLimiter()
        self._failed = LineLimiter()

    # -- the key space (read with the claim) ----------------------------------------------

    def key_for(self, number: str) -> str:
        """The key of the normalised ``number``'s entry."""
        return self._ops.key("learned", number)

    @staticmethod
    def decode(raw: Any) -> str | None:
        """The manager id in a stored value (``None``: nothing stored)."""
        if raw is None:
            return None
        manager, _, _ = str(raw).partition(" ")
        return manager or None

    # -- LearnedStore ---------------------------------------------------------------------

    def remember(self, number: str, manager: str, ttl_s: float) -> None:
        """Write the lesson in the background (see the module docstring)."""
        if len(self._pending) >= self._max_pending:
            if (held := self._dropped.allow(time.monotonic())) is not None:
                log.warning("learned_dropped", reason="storage writes backed up", held_back=held)
            return
        task = asyncio.get_running_loop().create_task(self._write(number, manager, ttl_s))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _write(self, number: str, manager: str, ttl_s: float) -> None:
        value = f"{manager} {int(time.time() * 1000)}"
        ttl_ms = max(1, int(ttl_s * 1000))
        client, key = self._ops.client, self.key_for(number)
        try:
            await self._ops.run("learned.set", lambda: client.set(key, value, px=ttl_ms))
        except StorageError as exc:
            if (held := self._failed.allow(time.monotonic())) is not None:
                log.warning("learned_not_stored", error=str(exc), held_back=held)

    async def get(self, number: str) -> Learned | None:
        """The live entry of ``number`` (value and remaining TTL, read together)."""
        client, key = self._ops.client, self.key_for(number)

        async def read() -> list[Any]:
            async with client.pipeline(transaction=True) as pipe:
                pipe.get(key)
                pipe.pttl(key)
                return list(await pipe.execute())

        raw, ttl_ms = await self._ops.run("learned.get", read)
        manager = self.decode(raw)
        if manager is None or int(ttl_ms) < 0:
            return None
        _, _, at_ms = str(raw).partition(" ")
        now = time.time()
        learned_at = int(at_ms) / 1000 if at_ms.isdigit() else now
        return Learned(manager, learned_at, now + int(ttl_ms) / 1000)

    async def forget(self, number: str) -> bool:
        """Drop ``number``'s entry; True if there was one."""
        client, key = self._ops.client, self.key_for(number)
        return bool(await self._ops.run("learned.del", lambda: client.delete(key)))

    async def aclose(self) -> None:
        """Wait (a little) for the writes in flight, then cancel what is left."""
        if self._pending:
            _, left = await asyncio.wait(set(self._pending), timeout=CLOSE_WAIT_S)
            for task in left:
                task.cancel()
