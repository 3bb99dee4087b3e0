"""Presence (who is on a call) in Redis, served from a local view that survives outages.

Keys (``P`` is ``storage_prefix``):

- ``P presence`` — sorted set of ``<workplace>|<call id>`` scored by expiry (Redis time, ms);
  expired members are trimmed on every write and the key's TTL covers its longest member.
- ``P presence:ended`` — sorted set of ``<workplace>|<call id>`` freed in the last hour: a "busy"
  for one of them is refused. Behind a load balancer ``connected`` and ``finished`` of one call
  reach different replicas, and their writes can land in either order (always after an outage,
  when each replica writes back what it saw); without this the workplace would stay busy.
- ``P presence:changed`` — channel: one JSON message per change, applied by the other replicas.

It keeps working while Redis is down: presence keeps and serves its local view, writing the changes
made meanwhile back to Redis once it answers again.

Worst-case memory: the local view is a :class:`~router.state.presence_view.PresenceView` (its
bounds); the changes waiting for Redis and those made during a snapshot are each at most
:data:`UNSYNCED_MAX`. In Redis, every member expires (its TTL) and ended calls after an hour.
"""

from __future__ import annotations

import asyncio
import json
import time

import structlog

from router.bounds import Bound
from router.errors import StorageError
from router.state.presence_view import PresenceView
from router.state.redis_conn import RedisOps
from router.state.redis_pubsub import Subscriber

log = structlog.get_logger("router.state")

PRESENCE_SYNC_S = 2.0
ENDED_TTL_MS = 3_600_000
"""How long a freed call is remembered (so a late "busy" for it is refused)."""

_BUSY_LUA = """
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local ttl = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
if redis.call('ZSCORE', KEYS[2], ARGV[1]) then
  return 0
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
if redis.call('PTTL', KEYS[1]) < ttl then
  redis.call('PEXPIRE', KEYS[1], ttl)
end
redis.call('PUBLISH', ARGV[3], ARGV[4])
return 1
"""

_FREE_LUA = """
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local ttl = tonumber(ARGV[4])
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
redis.call('ZADD', KEYS[2], now + ttl, ARGV[1])
redis.call('PEXPIRE', KEYS[2], ttl)
redis.call('PUBLISH', ARGV[2], ARGV[3])
return 1
"""

_SNAPSHOT_LUA = """
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
return {now, redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now, '+inf', 'WITHSCORES')}
"""


UNSYNCED_MAX = 50_000
"""Presence changes kept for write-back while Redis is down, at most (about 1 h of calls)."""


class RedisPresence:
    """:class:`~router.state.protocols.Presence` shared through Redis, read from a local view.

    ``busy()`` never waits on Redis. The view follows this replica's own changes at once, other
    replicas' via pub/sub, and a full snapshot on every (re)subscription and every
    ``sync_interval_s``. Redis failures are counted and logged, never raised.
    """

    def __init__(self, ops: RedisOps, *, sync_interval_s: float = PRESENCE_SYNC_S) -> None:
        self._ops = ops
        self.key = ops.key("presence")
        self.ended_key = ops.key("presence", "ended")
        self.channel = ops.key("presence", "changed")
        self._busy_script = ops.client.register_script(_BUSY_LUA)
        self._free_script = ops.client.register_script(_FREE_LUA)
        self._snapshot_script = ops.client.register_script(_SNAPSHOT_LUA)
        # workplace -> call id -> expiry (time.monotonic()), bounded.
        self.view = PresenceView(time.monotonic)
        # Changes Redis has not accepted yet: (workplace, call id) -> expiry, or None for "free".
        self._unsynced: dict[tuple[str, str], float | None] = {}
        # While a snapshot is in flight, the changes to replay on top of it.
        self._journal: list[tuple[str, str, float | None]] | None = None
        self._sync_lock = asyncio.Lock()
        self.subscriber = Subscriber(
            ops.client,
            self.channel,
            name="presence",
            on_message=self._on_message,
            on_connect=self._resync,
            on_tick=self._resync,
            tick_s=sync_interval_s,
        )

    def start(self) -> None:
        """Start following other replicas."""
        self.subscriber.start()

    async def aclose(self) -> None:
        """Stop following other replicas."""
        await self.subscriber.aclose()

    def bound(self) -> Bound:
        """Entries in the local view, and the most there can be."""
        return self.view.bound()

    def busy(self) -> frozenset[str]:
        """Workplaces on a call now (local view; never blocks, never scans)."""
        return self.view.busy()

    def _defer(self, workplace: str, call_id: str, expiry: float | None) -> None:
        """Keep a change for the next sync; bounded, oldest dropped (Redis TTLs cover those)."""
        self._unsynced.pop((workplace, call_id), None)
        self._unsynced[(workplace, call_id)] = expiry
        while len(self._unsynced) > UNSYNCED_MAX:
            del self._unsynced[next(iter(self._unsynced))]

    def _redis_down(self) -> bool:
        # While Redis is known to be down, do not queue every update behind a doomed round trip:
        # the engine applies presence in order, and waiting would make the local view lag.
        return self._ops.health.known_down

    async def set_busy(self, workplace: str, call_id: str, ttl_s: float) -> None:
        """Mark ``workplace`` on ``call_id`` here at once, then in Redis (for ``ttl_s``)."""
        self._apply(workplace, call_id, time.monotonic() + ttl_s)
        if self._redis_down():
            self._defer(workplace, call_id, time.monotonic() + ttl_s)
            return
        try:
            accepted = await self._write(workplace, call_id, ttl_s)
        except StorageError as exc:
            self._defer(workplace, call_id, time.monotonic() + ttl_s)
            log.debug("presence_local_only", workplace=workplace, error=str(exc))
            return
        if not accepted:  # the call already ended (its "finished" went to another replica)
            self._apply(workplace, call_id, None)

    async def set_free(self, workplace: str, call_id: str) -> None:
        """Mark the end of ``call_id`` on ``workplace`` here at once, then in Redis."""
        self._apply(workplace, call_id, None)
        if self._redis_down():
            self._defer(workplace, call_id, None)
            return
        try:
            await self._write(workplace, call_id, None)
        except StorageError as exc:
            self._defer(workplace, call_id, None)
            log.debug("presence_local_only", workplace=workplace, error=str(exc))

    async def sync(self) -> bool:
        """Write back unsynced changes, then take Redis' view; False (view kept) if Redis failed."""
        async with self._sync_lock:
            try:
                await self._sync()
            except StorageError:
                return False
            return True

    async def _resync(self) -> None:
        await self.sync()

    async def _sync(self) -> None:
        now = time.monotonic()
        for (workplace, call_id), expiry in list(self._unsynced.items()):
            if expiry is not None and expiry <= now:
                del self._unsynced[(workplace, call_id)]
                continue
            ttl_s = None if expiry is None else expiry - now
            await self._write(workplace, call_id, ttl_s)
            # Only if unchanged meanwhile: a newer change made during the write must stay queued.
            if self._unsynced.get((workplace, call_id), expiry) == expiry:
                self._unsynced.pop((workplace, call_id), None)
        journal: list[tuple[str, str, float | None]] = []
        self._journal = journal
        try:
            now_ms, flat = await self._ops.run(
                "presence.sync", lambda: self._snapshot_script(keys=[self.key])
            )
        finally:
            self._journal = None
        local_now = time.monotonic()
        entries: list[tuple[str, str, float]] = []
        for member, score in zip(flat[::2], flat[1::2], strict=True):
            workplace, _, call_id = str(member).partition("|")
            remaining_s = (float(score) - float(now_ms)) / 1000
            entries.append((workplace, call_id, local_now + remaining_s))
        self.view.replace(entries)
        for workplace, call_id, expiry in journal:
            self._apply(workplace, call_id, expiry)

    async def _write(self, workplace: str, call_id: str, ttl_s: float | None) -> bool:
        """Write one change; False when Redis refused a "busy" for a call that already ended."""
        member = f"{workplace}|{call_id}"
        keys = [self.key, self.ended_key]
        if ttl_s is None:
            message = json.dumps({"op": "free", "workplace": workplace, "call_id": call_id})
            await self._ops.run(
                "presence.set_free",
                lambda: self._free_script(
                    keys=keys, args=[member, self.channel, message, ENDED_TTL_MS]
                ),
            )
            return True
        ttl_ms = max(1, int(ttl_s * 1000))
        message = json.dumps(
            {"op": "busy", "workplace": workplace, "call_id": call_id, "ttl_ms": ttl_ms}
        )
        accepted = await self._ops.run(
            "presence.set_busy",
            lambda: self._busy_script(keys=keys, args=[member, ttl_ms, self.channel, message]),
        )
        return bool(accepted)

    def _apply(self, workplace: str, call_id: str, expiry: float | None) -> None:
        if self._journal is not None and len(self._journal) < UNSYNCED_MAX:
            self._journal.append((workplace, call_id, expiry))
        self.view.set(workplace, call_id, expiry)

    async def _on_message(self, data: str) -> None:
        try:
            message = json.loads(data)
            workplace, call_id = str(message["workplace"]), str(message["call_id"])
            if message["op"] == "busy":
                self._apply(workplace, call_id, time.monotonic() + int(message["ttl_ms"]) / 1000)
            else:
                self._apply(workplace, call_id, None)
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("presence_bad_message", error=str(exc))
