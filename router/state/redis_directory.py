"""The PBX directory (external numbers, workplaces) shared between replicas.

MTT sends ``numbersChanged``/``workplacesChanged`` to whichever replica the load balancer picks;
the one that refetches stores the result here, and the others pick it up from the channel.

Keys (``P`` is ``storage_prefix``; ``<kind>`` is any short name: ``numbers``, ``workplaces``,
``terminals``):

- ``P directory:<kind>`` — hash ``{version, updated_at, json}``; ``version`` grows by one with
  every save, in the same script that replaces the JSON.
- ``P directory:changed`` — channel: ``<kind>:<version>`` after each save.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from router.state.redis_conn import RedisOps
from router.state.redis_pubsub import Subscriber

DIRECTORY_POLL_S = 10.0
WATCHED = ("numbers", "workplaces", "terminals")
"""The kinds :meth:`DirectoryStore.watch` follows by default (what the directory shares)."""
_KIND = re.compile(r"[a-z_]{1,32}")

_SAVE_LUA = """
local v = redis.call('HINCRBY', KEYS[1], 'version', 1)
redis.call('HSET', KEYS[1], 'json', ARGV[1], 'updated_at', ARGV[2])
redis.call('PUBLISH', ARGV[3], ARGV[4] .. ':' .. v)
return v
"""


@dataclass(frozen=True)
class DirectorySnapshot:
    """One stored directory list with its version and when it was saved (Unix seconds)."""

    kind: str
    version: int
    updated_at: float
    data: Any


class DirectoryStore:
    """Versioned JSON documents, one per kind of directory data."""

    def __init__(self, ops: RedisOps, *, poll_interval_s: float = DIRECTORY_POLL_S) -> None:
        self._ops = ops
        self.channel = ops.key("directory", "changed")
        self.poll_interval_s = poll_interval_s
        self._save_script = ops.client.register_script(_SAVE_LUA)

    def _key(self, kind: str) -> str:
        if not _KIND.fullmatch(kind):
            raise ValueError(f"not a directory kind: {kind!r}")
        return self._ops.key("directory", kind)

    async def save(self, kind: str, data: Any) -> int:
        """Store ``data`` (anything ``json.dumps`` takes) as the next version of ``kind``."""
        key = self._key(kind)
        payload = json.dumps(data, ensure_ascii=False)
        version = await self._ops.run(
            "directory.save",
            lambda: self._save_script(
                keys=[key], args=[payload, f"{time.time():.3f}", self.channel, kind]
            ),
        )
        return int(version)

    async def load(self, kind: str) -> DirectorySnapshot | None:
        """The stored ``kind``, or ``None`` if never saved."""
        key = self._key(kind)
        client = self._ops.client
        version, updated_at, payload = await self._ops.run(
            "directory.load", lambda: client.hmget(key, ["version", "updated_at", "json"])
        )
        if version is None or payload is None:
            return None
        return DirectorySnapshot(kind, int(version), float(updated_at or 0), json.loads(payload))

    async def versions(self, kinds: Sequence[str]) -> dict[str, int | None]:
        """The current version of each of ``kinds`` (``None``: never saved)."""
        keys = [self._key(kind) for kind in kinds]

        async def read() -> list[Any]:
            async with self._ops.client.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.hget(key, "version")
                return list(await pipe.execute())

        values = await self._ops.run("directory.version", read)
        return {kind: None if v is None else int(v) for kind, v in zip(kinds, values, strict=True)}

    async def watch(
        self,
        callback: Callable[[str, int], Awaitable[None]],
        *,
        kinds: Sequence[str] = WATCHED,
        known: dict[str, int] | None = None,
    ) -> None:
        """Call ``callback(kind, version)`` whenever a kind's version differs from the last seen.

        Runs until cancelled; like :meth:`RulesStore.watch`, it re-reads the versions on every
        (re)subscription and every ``poll_interval_s``, and a version counts as seen only once
        ``callback`` returned.
        """
        last: dict[str, int] = dict(known or {})

        async def check(_message: str = "") -> None:
            for kind, version in (await self.versions(kinds)).items():
                if version is not None and version != last.get(kind):
                    await callback(kind, version)
                    last[kind] = version

        subscriber = Subscriber(
            self._ops.client,
            self.channel,
            name="directory",
            on_message=check,
            on_connect=check,
            on_tick=check,
            tick_s=self.poll_interval_s,
        )
        await subscriber.run()
