"""Per-call claims, and the reads a decision needs, in Redis: one round trip per parked call.

Keys (``P`` is ``storage_prefix``):

- ``P claim:<call id>`` — SET NX PX: the first replica to set it decides the call.
- the hashes of the spaces read with the claim (``P clients``: see
  :mod:`router.state.redis_clients`), and the keys of the key spaces (``P learned:<number>``:
  see :mod:`router.state.redis_learned`).

While Redis is down a claim falls back to this process's memory (so one replica never decides a
call twice) and reads are answered from the spaces' caches where they can be.
"""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import structlog

from router.bounds import Bound
from router.context import Read
from router.errors import StorageError
from router.state.memory import LocalClaims
from router.state.protocols import Gathered
from router.state.redis_conn import RedisOps

log = structlog.get_logger("router.state")


def replica_id() -> str:
    """``host:pid``: stored as the owner of claims, to tell replicas apart when debugging."""
    return f"{socket.gethostname()}:{os.getpid()}"


class HashSpace(Protocol):
    """A storage space kept in one Redis hash with a local cache (the client map is one)."""

    key: str
    """The hash's key."""

    @property
    def generation(self) -> int:
        """The cache's generation, to pass to :meth:`remember` with an answer read now."""
        ...

    def cached(self, field: str) -> tuple[bool, str | None]:
        """``(True, value)`` when the cache may answer for ``field``."""
        ...

    def stale(self, field: str) -> tuple[bool, str | None]:
        """What the cache last knew (served while Redis is down)."""
        ...

    def remember(self, field: str, value: str | None, generation: int) -> None:
        """Cache ``value`` read at ``generation``."""
        ...


class KeySpace(Protocol):
    """A storage space kept as one Redis key per entry, read with ``GET`` (not cached)."""

    def key_for(self, field: str) -> str:
        """The key that holds ``field``'s value."""
        ...

    def decode(self, raw: Any) -> str | None:
        """The value a stored string stands for (``None``: nothing)."""
        ...


class RedisCallStore:
    """:class:`~router.state.protocols.CallStore` across replicas: SET NX PX plus HGETs, in one
    pipelined round trip (none for the reads the spaces' caches answer), falling back to memory.

    The local claim is taken first and kept, so a call claimed while Redis was up is not claimed
    again here while it is down (and vice versa). While Redis is down, two *different* replicas
    could both claim a call: that is the price of deciding at all. ``spaces`` maps a read's space
    to the hash that holds it, ``keys`` a space to its :class:`KeySpace`; a read of another space
    is answered ``None``.
    """

    def __init__(
        self,
        ops: RedisOps,
        *,
        spaces: Mapping[str, HashSpace] | None = None,
        keys: Mapping[str, KeySpace] | None = None,
        local: LocalClaims | None = None,
    ) -> None:
        self._ops = ops
        self._spaces = dict(spaces or {})
        self._keys = dict(keys or {})
        self._local = local if local is not None else LocalClaims()
        # Unique per store, not only per process: two stores in one process are two claimants.
        self._owner = f"{replica_id()}:{secrets.token_hex(4)}"

    def bound(self) -> Bound:
        """Claims held in this process (the fallback), and the most there can be."""
        return self._local.bound()

    async def claim(self, call_id: str, ttl_s: float) -> bool:
        """True for the first claimant of ``call_id`` within ``ttl_s`` on any replica."""
        return (await self.claim_and_read(call_id, ttl_s, ())).claimed

    async def claim_and_read(self, call_id: str, ttl_s: float, reads: Sequence[Read]) -> Gathered:
        """Claim ``call_id`` and answer ``reads`` in one round trip (see the class docstring)."""
        if not self._local.claim(call_id, ttl_s):
            return Gathered(False, {})  # decided here already: nothing to read for it
        values: dict[Read, str | None] = {}
        asked: list[tuple[Read, HashSpace, int]] = []
        keyed: list[tuple[Read, KeySpace]] = []
        for read in reads:
            space = self._spaces.get(read.space)
            if space is None:
                if (key_space := self._keys.get(read.space)) is not None:
                    keyed.append((read, key_space))
                else:
                    values[read] = None
                continue
            hit, value = space.cached(read.key)
            if hit:
                values[read] = value
            else:
                asked.append((read, space, space.generation))
        client = self._ops.client
        key = self._ops.key("claim", call_id)
        ttl_ms = max(1, int(ttl_s * 1000))

        async def round_trip() -> list[Any]:
            if not asked and not keyed:
                results = [await client.set(key, self._owner, nx=True, px=ttl_ms)]
            else:
                # Built per attempt: a pipeline forgets its commands once executed. Errors come
                # back per command, so a failing read cannot hide the claim's own answer.
                pipe = client.pipeline(transaction=False)
                pipe.set(key, self._owner, nx=True, px=ttl_ms)
                for read, space, _ in asked:
                    pipe.hget(space.key, read.key)
                for read, key_space in keyed:
                    pipe.get(key_space.key_for(read.key))
                results = list(await pipe.execute(raise_on_error=False))
            if isinstance(results[0], Exception):
                raise results[0]
            if results[0] is None:
                # Not set: another replica's claim, or ours whose reply was lost and the command
                # retried (redis-py retries once after a broken connection). Ask whose it is.
                results[0] = str(await client.get(key)) == self._owner
            return results

        try:
            got, *answers = await self._ops.run("claim", round_trip)
        except StorageError as exc:
            log.warning("claim_local_fallback", call_id=call_id, error=str(exc))
            for read, space, _ in asked:
                hit, value = space.stale(read.key)
                if hit:
                    values[read] = value
            return Gathered(True, values)
        for (read, space, generation), raw in zip(asked, answers[: len(asked)], strict=True):
            if isinstance(raw, Exception):
                continue  # unanswered: the rules decide without it
            value = None if raw is None else str(raw)
            space.remember(read.key, value, generation)
            values[read] = value
        for (read, key_space), raw in zip(keyed, answers[len(asked) :], strict=True):
            if not isinstance(raw, Exception):
                values[read] = key_space.decode(raw)
        if not got:
            return Gathered(False, {})  # another replica decides it: nothing to read for it
        return Gathered(True, values)
