"""Presence (who is on a call) in Redis, served from a local view that survives outages.

Keys (``P`` is ``storage_prefix``):

- ``P presence`` — sorted set of ``<workplace>|<call id>`` scored by expiry (Redis time, ms);
  expired members are trimmed on every write and the key's TTL covers its longest member.
- ``P presence:ended`` — sorted set of ``<workplace>|<call id>`` freed in the last hour: a "busy"
  for one of them is refused. Behind a load balancer ``connected`` and ``finished`` of one call
  reach different replicas, and their writes can land in either order (always after an outage,
  when each replica writes back what it saw); without this the workplace would stay busy.
- ``P presence:batches`` — channel: one message per write, a JSON list of ``[member, TTL ms]``
  (TTL 0: freed), applied in order by every replica.

Changes are written in batches: the changes of :data:`FLUSH_S` go to Redis in order as one Lua
script call (one round trip, one ``PUBLISH``), so presence costs Redis a fraction of a round trip
per call instead of two scripts and two messages (docs/PERFORMANCE.md). Each replica applies its
own changes to its view at once; the others see them ``FLUSH_S`` later.

It keeps working while Redis is down: presence keeps and serves its local view, writing the changes
made meanwhile back to Redis once it answers again.

Worst-case memory: the local view is a :class:`~router.state.presence_view.PresenceView` (its
bounds); the changes waiting for the next write and those kept for write-back while Redis is
down are each at most :data:`UNSYNCED_MAX`, those replayed over a snapshot about twice that. In
Redis, every member expires (its TTL) and ended calls after an hour.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import orjson
import structlog

from router.bounds import Bound
from router.errors import StorageError
from router.state.presence_view import PresenceView
from router.state.redis_conn import RedisOps, cancel_and_wait
from router.state.redis_pubsub import Subscriber

log = structlog.get_logger("router.state")

PRESENCE_SYNC_S = 2.0
ENDED_TTL_MS = 3_600_000
"""How long a freed call is remembered (so a late "busy" for it is refused)."""

# One batch of changes, in order. KEYS: the presence zset, the ended zset. ARGV: the channel, the
# ended TTL (ms), then a member and a TTL (ms) per change: a TTL above 0 marks busy, 0 frees. A
# "busy" for a call ended lately is refused (its 0-based index returned) and left out of the one
# message published for the whole batch.
_BATCH_LUA = """
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local ended_ttl = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local refused, done, longest, freed = {}, {}, 0, false
for i = 3, #ARGV, 2 do
  local member, ttl = ARGV[i], tonumber(ARGV[i + 1])
  if ttl > 0 then
    if redis.call('ZSCORE', KEYS[2], member) then
      refused[#refused + 1] = (i - 3) / 2
    else
      redis.call('ZADD', KEYS[1], now + ttl, member)
      if ttl > longest then
        longest = ttl
      end
      done[#done + 1] = {member, ttl}
    end
  else
    redis.call('ZREM', KEYS[1], member)
    redis.call('ZADD', KEYS[2], now + ended_ttl, member)
    freed = true
    done[#done + 1] = {member, 0}
  end
end
if longest > 0 and redis.call('PTTL', KEYS[1]) < longest then
  redis.call('PEXPIRE', KEYS[1], longest)
end
if freed then
  redis.call('PEXPIRE', KEYS[2], ended_ttl)
end
if #done > 0 then
  redis.call('PUBLISH', ARGV[1], cjson.encode(done))
end
return refused
"""

_SNAPSHOT_LUA = """
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
return {now, redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now, '+inf', 'WITHSCORES')}
"""


UNSYNCED_MAX = 50_000
"""Presence changes kept for write-back while Redis is down, at most (about 1 h of calls)."""
FLUSH_S = 0.01
"""How long a change waits for others to share its write: at 300 calls/s (600 changes) a write
carries about six. Other replicas see a change this much later; this one sees it at once."""
BATCH_MAX = 500
"""Changes in one write, at most."""

# (workplace, call id, expiry on time.monotonic() or None for "free")
Change = tuple[str, str, float | None]


class RedisPresence:
    """:class:`~router.state.protocols.Presence` shared through Redis, read from a local view.

    ``busy()`` never waits on Redis, and neither do ``set_busy``/``set_free``: a change applies to
    the local view at once and is written with the others of the next :data:`FLUSH_S`, in order,
    as one script call that publishes one message (:meth:`flush` waits for the writes). The view
    follows every replica's messages in Redis' order, and a full snapshot on every
    (re)subscription and every ``sync_interval_s``. Redis failures are counted and logged, never
    raised.
    """

    def __init__(
        self, ops: RedisOps, *, sync_interval_s: float = PRESENCE_SYNC_S, flush_s: float = FLUSH_S
    ) -> None:
        self._ops = ops
        self.key = ops.key("presence")
        self.ended_key = ops.key("presence", "ended")
        self.channel = ops.key("presence", "batches")
        self._batch_script = ops.client.register_script(_BATCH_LUA)
        self._snapshot_script = ops.client.register_script(_SNAPSHOT_LUA)
        self._flush_s = flush_s
        # workplace -> call id -> expiry (time.monotonic()), bounded.
        self.view = PresenceView(time.monotonic)
        # Changes waiting for the next write, in order; the one being written.
        self._outbox: list[Change] = []
        self._writing: list[Change] = []
        self._flusher: asyncio.Task[None] | None = None
        # Changes Redis has not accepted yet: (workplace, call id) -> expiry, or None for "free".
        self._unsynced: dict[tuple[str, str], float | None] = {}
        # While a snapshot is in flight, the changes to replay on top of it.
        self._journal: list[Change] | None = None
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
        """Write what is waiting (within the operation deadline), stop following other replicas."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._ops.timeouts.op_deadline_s * 2):
                await self.flush()
        if self._flusher is not None:
            await cancel_and_wait(self._flusher, "presence closing")
        await self.subscriber.aclose()

    def bound(self) -> Bound:
        """Entries in the local view, and the most there can be."""
        return self.view.bound()

    def busy(self) -> frozenset[str]:
        """Workplaces on a call now (local view; never blocks, never scans)."""
        return self.view.busy()

    async def set_busy(self, workplace: str, call_id: str, ttl_s: float) -> None:
        """Mark ``workplace`` on ``call_id`` here at once, and in Redis (for ``ttl_s``) with the
        next write."""
        expiry = time.monotonic() + ttl_s
        self._apply(workplace, call_id, expiry)
        self._queue(workplace, call_id, expiry)

    async def set_free(self, workplace: str, call_id: str) -> None:
        """Mark the end of ``call_id`` on ``workplace`` here at once, and in Redis with the next
        write."""
        self._apply(workplace, call_id, None)
        self._queue(workplace, call_id, None)

    async def flush(self) -> None:
        """Until the changes made so far are written (or kept for write-back: Redis failed)."""
        while (flusher := self._flusher) is not None:
            await asyncio.shield(flusher)

    def _queue(self, workplace: str, call_id: str, expiry: float | None) -> None:
        # While Redis is known to be down, do not queue every change behind a doomed round trip:
        # keep it for the write-back of the next sync.
        if self._ops.health.known_down or len(self._outbox) >= UNSYNCED_MAX:
            self._defer(workplace, call_id, expiry)
            return
        self._outbox.append((workplace, call_id, expiry))
        if self._flusher is None:
            self._flusher = asyncio.get_running_loop().create_task(
                self._flush_loop(), name="presence-flush"
            )

    async def _flush_loop(self) -> None:
        try:
            while self._outbox:
                await asyncio.sleep(self._flush_s)
                self._writing = self._outbox[:BATCH_MAX]
                del self._outbox[:BATCH_MAX]
                try:
                    await self._write(self._writing)
                except StorageError as exc:
                    for workplace, call_id, expiry in self._writing:
                        self._defer(workplace, call_id, expiry)
                    log.debug("presence_local_only", changes=len(self._writing), error=str(exc))
                except Exception as exc:  # a bug must not stop the writes behind it
                    log.error("presence_write_failed", error=repr(exc))
                self._writing = []
        finally:
            self._flusher = None

    def _defer(self, workplace: str, call_id: str, expiry: float | None) -> None:
        """Keep a change for the next sync; bounded, oldest dropped (Redis TTLs cover those)."""
        self._unsynced.pop((workplace, call_id), None)
        self._unsynced[(workplace, call_id)] = expiry
        while len(self._unsynced) > UNSYNCED_MAX:
            del self._unsynced[next(iter(self._unsynced))]

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
        pending = list(self._unsynced.items())
        for start in range(0, len(pending), BATCH_MAX):
            chunk = pending[start : start + BATCH_MAX]
            await self._write(
                [(workplace, call_id, expiry) for (workplace, call_id), expiry in chunk]
            )
            # Only if unchanged meanwhile: a newer change made during the write must stay queued.
            for key, expiry in chunk:
                if self._unsynced.get(key, expiry) == expiry:
                    self._unsynced.pop(key, None)
        # Replayed on top of the snapshot: what is not in Redis yet, and what changes meanwhile.
        journal: list[Change] = [*self._writing, *self._outbox]
        journal += [(w, c, expiry) for (w, c), expiry in self._unsynced.items()]
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
            self.view.set(workplace, call_id, expiry)

    async def _write(self, changes: list[Change]) -> None:
        """Write ``changes`` in order, one script call; a refused "busy" (the call already ended:
        its "finished" went to another replica) is undone here."""
        now = time.monotonic()
        args: list[str | int] = [self.channel, ENDED_TTL_MS]
        sent: list[Change] = []
        for workplace, call_id, expiry in changes:
            if expiry is not None and expiry <= now:
                continue  # expired meanwhile: nothing to tell
            ttl_ms = 0 if expiry is None else max(1, int((expiry - now) * 1000))
            args += [f"{workplace}|{call_id}", ttl_ms]
            sent.append((workplace, call_id, expiry))
        if not sent:
            return
        keys = [self.key, self.ended_key]
        refused = await self._ops.run(
            "presence.write", lambda: self._batch_script(keys=keys, args=args)
        )
        for index in refused:
            workplace, call_id, _ = sent[int(index)]
            self._apply(workplace, call_id, None)

    def _apply(self, workplace: str, call_id: str, expiry: float | None) -> None:
        if self._journal is not None and len(self._journal) < 2 * UNSYNCED_MAX:
            self._journal.append((workplace, call_id, expiry))
        self.view.set(workplace, call_id, expiry)

    async def _on_message(self, data: str) -> None:
        # Every replica's batches in the order Redis ran them, this one's own included: a change
        # applied here when it was made is applied again after any older write of another replica
        # (until then, for up to FLUSH_S and a round trip, an older one may show here).
        try:
            changes = orjson.loads(data)
            now = time.monotonic()
            for member, ttl_ms in changes:
                workplace, _, call_id = str(member).partition("|")
                ttl = int(ttl_ms)
                self._apply(workplace, call_id, now + ttl / 1000 if ttl > 0 else None)
        except (ValueError, TypeError) as exc:
            log.warning("presence_bad_message", error=str(exc))
