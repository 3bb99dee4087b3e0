"""Per-client edits for CRM synchronisation: caller number -> personal manager, in a Redis hash.

Keys (``P`` is ``storage_prefix``):

- ``P clients`` — hash: normalised number -> manager id. Business data, so no TTL.
- ``P clients:import:<random>`` — the map being built by ``import --replace``; it expires after an
  hour should the import die, and is renamed over ``P clients`` when complete.
- ``P clients:changed`` — channel: the number that changed, or ``*`` after a bulk change.

Lookups are one HGET, cached in a bounded LRU (hits and misses alike) that is trusted only while
this process is subscribed to the channel; a (re)subscription clears it. While Redis is down a
cached answer is served stale rather than not at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import secrets
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import structlog
from redis.asyncio.client import Pipeline

from router.errors import StorageError
from router.numbers import normalize, try_normalize
from router.state.clients_csv import BatchReader, RowProblem, check_manager_id, read_csv_rows
from router.state.redis_conn import RedisOps
from router.state.redis_pubsub import Subscriber

log = structlog.get_logger("router.state")

CACHE_SIZE = 100_000
IMPORT_BATCH = 10_000
IMPORT_TEMP_TTL_S = 3600
_MISSING = ""  # cached "no manager" (a manager id is never empty)

# ARGV[1]: "number<TAB>manager" lines (neither contains whitespace); HSET 500 pairs at a time.
_IMPORT_LUA = r"""
local key = KEYS[1]
local added, n, args = 0, 0, {}
for number, manager in string.gmatch(ARGV[1], "([^\t\n]+)\t([^\n]+)") do
  args[n + 1] = number
  args[n + 2] = manager
  n = n + 2
  if n >= 1000 then
    added = added + redis.call('HSET', key, unpack(args, 1, n))
    n = 0
  end
end
if n > 0 then
  added = added + redis.call('HSET', key, unpack(args, 1, n))
end
if ARGV[2] ~= '' then
  redis.call('EXPIRE', key, ARGV[2])
end
if ARGV[3] ~= '' then
  redis.call('PUBLISH', ARGV[3], '*')
end
return added
"""


@dataclass(frozen=True)
class ImportResult:
    """What an import did: rows written, numbers new to the map, and rows refused."""

    imported: int
    added: int
    bad_rows: int
    problems: tuple[RowProblem, ...]
    """The first refused rows as ``(line, message)``; ``bad_rows`` counts all of them."""
    replaced: bool = False


class ClientMap:
    """Number -> manager id, shared by every replica through Redis.

    Worst-case memory of the local cache: ``cache_size`` entries (least recently used out
    first) of a number (at most 32 digits) and a manager id (at most 128 characters), some
    300 bytes each: about 30 MB at the default. Keys come from callers, so the limit matters.
    """

    def __init__(
        self,
        ops: RedisOps,
        *,
        cache_size: int = CACHE_SIZE,
        batch_size: int = IMPORT_BATCH,
    ) -> None:
        self._ops = ops
        self.key = ops.key("clients")
        self.channel = ops.key("clients", "changed")
        self.cache_size = cache_size
        self.batch_size = batch_size
        self._import_script = ops.client.register_script(_IMPORT_LUA)
        self._cache: OrderedDict[str, str] = OrderedDict()
        self._cache_live = False
        # Bumped on every invalidation: a lookup that raced with one must not cache its answer.
        self._generation = 0
        self.subscriber = Subscriber(
            ops.client,
            self.channel,
            name="clients",
            on_message=self._on_message,
            on_connect=self._on_connect,
            on_disconnect=self._on_disconnect,
            tick_s=60.0,
        )

    def start(self) -> None:
        """Follow changes from other replicas, which enables the cache."""
        self.subscriber.start()

    async def aclose(self) -> None:
        """Stop following changes (the cache is no longer trusted)."""
        await self.subscriber.aclose()
        self._on_disconnect()

    async def get(self, number: str) -> str | None:
        """The manager of ``number`` (any spelling), or ``None``; StorageError if unknown and
        Redis fails."""
        normal = try_normalize(number)
        if normal is None:
            return None
        hit, cached = self.cached(normal)
        if hit:
            return cached
        generation = self.generation
        client = self._ops.client
        try:
            value = await self._ops.run("clients.get", lambda: client.hget(self.key, normal))
        except StorageError:
            hit, stale = self.stale(normal)
            if hit:
                return stale
            raise
        manager = None if value is None else str(value)
        self.remember(normal, manager, generation)
        return manager

    # -- as a space of the call store (one round trip with the claim) -----------------------

    @property
    def generation(self) -> int:
        """Bumped on every invalidation; pass it to :meth:`remember` with the answer it got."""
        return self._generation

    def cached(self, number: str) -> tuple[bool, str | None]:
        """``(True, manager or None)`` when the cache may answer for the normalised ``number``."""
        if self._cache_live and (cached := self._cache.get(number)) is not None:
            self._cache.move_to_end(number)
            return True, cached or None
        return False, None

    def stale(self, number: str) -> tuple[bool, str | None]:
        """What the cache last knew, trusted or not: served while Redis is down."""
        cached = self._cache.get(number)
        return (False, None) if cached is None else (True, cached or None)

    def remember(self, number: str, manager: str | None, generation: int) -> None:
        """Cache an answer read at ``generation``, unless an invalidation raced with the read."""
        if self._cache_live and generation == self._generation:
            self._cache[number] = manager or _MISSING
            self._cache.move_to_end(number)
            if len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)

    async def set(self, number: str, manager: str) -> str:
        """Make ``manager`` the personal manager of ``number``; returns the normalised number.

        Raises :class:`~router.numbers.NumberError` or ValueError for a bad number or id.
        """
        normal = normalize(number)
        check_manager_id(manager)
        await self._write("clients.set", normal, lambda pipe: pipe.hset(self.key, normal, manager))
        return normal

    async def delete(self, number: str) -> bool:
        """Forget ``number``; True if it was in the map."""
        normal = normalize(number)
        removed = await self._write("clients.del", normal, lambda pipe: pipe.hdel(self.key, normal))
        return bool(removed)

    async def count(self) -> int:
        """How many numbers the map holds."""
        client = self._ops.client
        return int(await self._ops.run("clients.count", lambda: client.hlen(self.key)))

    async def import_csv(
        self,
        source: str | Path | Iterable[Sequence[str]],
        *,
        managers: Collection[str] | None = None,
        replace: bool = False,
        progress: Callable[[int, int], None] | None = None,
    ) -> ImportResult:
        """Add ``NUMBER,MANAGER`` rows from a CSV file (or rows) in pipelined batches.

        A header row and blank or ``#`` lines are skipped. A row with a bad number, a bad
        manager id, or a manager not in ``managers`` (when given) is reported with its line
        number and not imported. With ``replace`` the new map is built aside and swapped in
        atomically, and only if no row was refused (otherwise the map is left as it was).
        ``progress(bytes read, file size)`` is called after each batch written (a file only).
        """
        if isinstance(source, str | Path):
            raw = await asyncio.to_thread(Path(source).open, "rb")
            with io.TextIOWrapper(raw, encoding="utf-8-sig", newline="") as handle:
                size = os.fstat(raw.fileno()).st_size
                done = None if progress is None else lambda: progress(raw.tell(), size)
                return await self._import(read_csv_rows(handle), managers, replace, done)
        return await self._import(enumerate(source, start=1), managers, replace)

    async def _import(
        self,
        rows: Iterable[tuple[int, Sequence[str]]],
        managers: Collection[str] | None,
        replace: bool,
        written: Callable[[], None] | None = None,
    ) -> ImportResult:
        reader = BatchReader(iter(rows), managers=managers, batch_size=self.batch_size)
        target = self._ops.key("clients", "import", secrets.token_hex(8)) if replace else self.key
        batches = iter(reader)
        added = 0
        try:
            # Parse in a thread (the event loop stays free), one batch ahead of the writes.
            upcoming = asyncio.ensure_future(asyncio.to_thread(next, batches, None))
            try:
                while (batch := await upcoming) is not None:
                    upcoming = asyncio.ensure_future(asyncio.to_thread(next, batches, None))
                    added += await self._write_batch(target, batch, temporary=replace)
                    if written is not None:
                        written()
            finally:
                if not upcoming.done():
                    with contextlib.suppress(Exception):
                        await upcoming  # a thread cannot be cancelled: let it finish its batch
            if replace and reader.bad_rows:
                log.warning("clients_import_not_replaced", bad_rows=reader.bad_rows)
                return ImportResult(0, 0, reader.bad_rows, tuple(reader.problems), replaced=False)
            if replace:
                await self._swap_in(target, empty=reader.accepted == 0)
        finally:
            if replace:
                client = self._ops.client
                with contextlib.suppress(StorageError):  # it expires by itself anyway
                    await self._ops.run("clients.import", lambda: client.delete(target))
        log.info("clients_imported", rows=reader.accepted, added=added, bad_rows=reader.bad_rows)
        return ImportResult(
            reader.accepted, added, reader.bad_rows, tuple(reader.problems), replaced=replace
        )

    async def _write_batch(self, target: str, batch: dict[str, str], *, temporary: bool) -> int:
        # One string argument instead of 20,000: redis-py packs arguments in Python at ~2 µs
        # each, which made the packing, not Redis, the cost of an import (5 s per million).
        payload = "\n".join(f"{number}\t{manager}" for number, manager in batch.items())
        args = [payload, IMPORT_TEMP_TTL_S if temporary else "", "" if temporary else self.channel]
        added = await self._ops.run(
            "clients.import", lambda: self._import_script(keys=[target], args=args)
        )
        return int(added)

    async def _swap_in(self, temp: str, *, empty: bool) -> None:
        async def send() -> None:
            async with self._ops.client.pipeline(transaction=True) as pipe:
                if empty:
                    pipe.delete(self.key)
                else:
                    pipe.rename(temp, self.key)
                    pipe.persist(self.key)
                pipe.publish(self.channel, "*")
                await pipe.execute()

        await self._ops.run("clients.import", send)
        self._invalidate("*")

    async def _write(self, op: str, normal: str, command: Callable[[Pipeline], object]) -> int:
        async def send() -> int:
            async with self._ops.client.pipeline(transaction=True) as pipe:
                command(pipe)
                pipe.publish(self.channel, normal)
                results = await pipe.execute()
            return int(results[0])

        result = await self._ops.run(op, send)
        self._invalidate(normal)
        return result

    def _invalidate(self, what: str) -> None:
        self._generation += 1
        if what == "*":
            self._cache.clear()
        else:
            self._cache.pop(what, None)

    async def _on_message(self, data: str) -> None:
        self._invalidate(data)

    async def _on_connect(self) -> None:
        # Changes published while we were not listening are lost: start afresh.
        self._invalidate("*")
        self._cache_live = True

    def _on_disconnect(self) -> None:
        self._cache_live = False
        self._generation += 1
