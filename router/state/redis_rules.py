"""Routing rules in Redis: pushed by an operator, followed by every replica, the last ten kept.

Keys (``P`` is ``storage_prefix``):

- ``P rules`` — hash: the current version (``version``, ``text``, ``pushed_at``, ``source``,
  ``host``, ``push_id``, ``clients_sha``, ``clients_parts``, ``counts``); a script bumps
  ``version`` and replaces the rest in one step, so a reader never sees the text of one version
  with the number of another.
- ``P rules:v:N`` — hash: version ``N`` as pushed (the same fields, and ``rollback_of``), kept
  for the last :data:`KEEP` versions; ``P rules:versions`` — list of their numbers, newest first.
- ``P rules:clients:SHA`` — list: a ``clients_file``'s content in parts of about
  :data:`PART_BYTES` (cut at line ends), named by its SHA-256: a version that does not change the
  file shares its content, and it is deleted with the last kept version that names it. Immutable
  while it exists, so a replica may read it part by part, each read small and quick.
- ``P rules:changed`` — channel: the new version number, published by the same script.

Validation is the caller's job (``mtt-router rules push`` runs the rules loader first): the store
keeps text, not parsed rules, so every replica parses the exact bytes that were checked.
"""

from __future__ import annotations

import functools
import hashlib
import json
import secrets
import socket
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, NamedTuple

import structlog

from router.errors import StorageError
from router.state.protocols import PushedRules
from router.state.redis_conn import RedisOps
from router.state.redis_pubsub import Subscriber

log = structlog.get_logger("router.state")

RULES_POLL_S = 2.0
"""The watcher re-reads the version this often, in case a pub/sub message was lost."""
KEEP = 10
"""Versions kept for ``rules history`` and ``rules rollback``."""
PART_BYTES = 1 << 20
"""A ``clients_file`` is stored in parts about this size: each read of one stays short."""
_ENTRY = ("version", "pushed_at", "source", "host", "counts", "clients_file", "clients_sha",
          "clients_bytes", "rollback_of")  # fmt: skip

# KEYS: rules, versions. ARGV: 1 text, 2 pushed_at, 3 source, 4 channel, 5 push_id, 6 host,
# 7 counts, 8 clients_file, 9 clients_sha, 10 clients_bytes, 11 rollback_of, 12 keep,
# 13 version key prefix, 14 clients key prefix, 15.. the clients parts (a new file only).
_PUSH_LUA = """
local rules, versions, vp, cp = KEYS[1], KEYS[2], ARGV[13], ARGV[14]
local f = {text=ARGV[1], counts=ARGV[7], clients_file=ARGV[8], clients_sha=ARGV[9],
           clients_bytes=ARGV[10]}
if ARGV[11] ~= '' then
  local old = redis.call('HMGET', vp .. ARGV[11], 'text', 'counts', 'clients_file',
                         'clients_sha', 'clients_bytes', 'source')
  if not old[1] then return -1 end
  f = {text=old[1], counts=old[2] or '', clients_file=old[3] or '', clients_sha=old[4] or '',
       clients_bytes=old[5] or ''}
  if ARGV[3] == '' then ARGV[3] = old[6] or '' end
elseif #ARGV > 14 and redis.call('EXISTS', cp .. f.clients_sha) == 0 then
  redis.call('RPUSH', cp .. f.clients_sha, unpack(ARGV, 15))
end
if redis.call('LLEN', versions) == 0 then
  local cur = redis.call('HMGET', rules, 'version', 'text', 'pushed_at', 'source')
  if cur[1] and cur[2] then  -- pushed before versions were kept: keep it as the first
    redis.call('HSET', vp .. cur[1], 'version', cur[1], 'text', cur[2],
               'pushed_at', cur[3] or '', 'source', cur[4] or '')
    redis.call('RPUSH', versions, cur[1])
  end
end
local v = redis.call('HINCRBY', rules, 'version', 1)
local fields = {'text', f.text, 'pushed_at', ARGV[2], 'source', ARGV[3], 'host', ARGV[6],
                'counts', f.counts, 'clients_file', f.clients_file,
                'clients_sha', f.clients_sha, 'clients_bytes', f.clients_bytes}
redis.call('HSET', rules, 'push_id', ARGV[5], unpack(fields))
redis.call('HSET', vp .. v, 'version', v, 'rollback_of', ARGV[11], unpack(fields))
redis.call('LPUSH', versions, v)
local keep = tonumber(ARGV[12])
local gone = redis.call('LRANGE', versions, keep, -1)
redis.call('LTRIM', versions, 0, keep - 1)
local kept_shas = {}
for _, k in ipairs(redis.call('LRANGE', versions, 0, -1)) do
  local sha = redis.call('HGET', vp .. k, 'clients_sha')
  if sha then kept_shas[sha] = true end
end
for _, k in ipairs(gone) do
  local sha = redis.call('HGET', vp .. k, 'clients_sha')
  if sha and sha ~= '' and not kept_shas[sha] then redis.call('DEL', cp .. sha) end
  redis.call('DEL', vp .. k)
end
redis.call('PUBLISH', ARGV[4], v)
return v
"""


class Version(NamedTuple):
    """One kept version, as ``rules history`` lists it (the text is not read)."""

    version: int
    pushed_at: float | None
    source: str
    host: str
    counts: Mapping[str, int]
    clients_file: str
    clients_bytes: int | None
    rollback_of: int | None

    def to_json(self) -> dict[str, Any]:
        """Plain JSON."""
        return {**self._asdict(), "counts": dict(self.counts)}


def split_parts(text: str, size: int = PART_BYTES) -> list[str]:
    """``text`` in parts of about ``size`` characters, each ending at a line end."""
    parts: list[str] = []
    start = 0
    while start < len(text):
        end = text.find("\n", start + size)
        end = len(text) if end < 0 else end + 1
        parts.append(text[start:end])
        start = end
    return parts


class RulesStore:
    """The pushed rules versions: the current one, the last :data:`KEEP`, their clients files."""

    def __init__(self, ops: RedisOps, *, poll_interval_s: float = RULES_POLL_S) -> None:
        self._ops = ops
        self.key = ops.key("rules")
        self.versions_key = ops.key("rules", "versions")
        self.channel = ops.key("rules", "changed")
        self.poll_interval_s = poll_interval_s
        self._push_script = ops.client.register_script(_PUSH_LUA)

    def _version_key(self, version: int | str) -> str:
        return self._ops.key("rules", "v", str(version))

    def _clients_key(self, sha: str) -> str:
        return self._ops.key("rules", "clients", sha)

    async def push(
        self,
        text: str,
        *,
        source: str = "",
        clients: str | None = None,
        clients_file: str = "",
        counts: Mapping[str, int] | None = None,
    ) -> int:
        """Store ``text`` (and the ``clients_file`` content ``clients``) as the next version,
        announce it, and return its number."""
        sha = "" if clients is None else hashlib.sha256(clients.encode()).hexdigest()
        parts = [] if clients is None else split_parts(clients) or [""]
        size = "" if clients is None else str(len(clients.encode()))
        version = await self._run_push(
            [text, source, json.dumps(dict(counts or {})), clients_file, sha, size, ""], parts
        )
        log.info("rules_pushed", version=version, source=source, bytes=len(text), clients=size)
        return version

    async def rollback(self, old: int, *, source: str = "") -> int | None:
        """Store kept version ``old``'s content as the next version (``None``: not kept)."""
        version = await self._run_push(["", source, "", "", "", "", str(old)], [])
        if version < 0:
            return None
        log.info("rules_rolled_back", version=version, content_of=old)
        return version

    async def _run_push(self, fields: list[str], parts: list[str]) -> int:
        text, source, counts, clients_file, sha, size, rollback_of = fields
        args: list[str | int] = [
            text, f"{time.time():.3f}", source, self.channel, secrets.token_hex(8),
            socket.gethostname(), counts, clients_file, sha, size, rollback_of, KEEP,
            self._version_key(""), self._clients_key(""), *parts,
        ]  # fmt: skip
        keys = [self.key, self.versions_key]
        version = await self._ops.run("rules.push", lambda: self._push_script(keys, args))
        return int(version)

    async def pull(self) -> PushedRules | None:
        """The current version with its ``clients_file`` content, or ``None`` before a push."""
        return await self._read(self.key)

    async def pull_version(self, version: int) -> PushedRules | None:
        """Kept version ``version`` with its ``clients_file`` content (``None``: not kept)."""
        return await self._read(self._version_key(version))

    async def head(self) -> tuple[int, str, str] | None:
        """``(version, text, clients_sha)`` of the current version, without the content."""
        client = self._ops.client
        version, text, sha = await self._ops.run(
            "rules.pull", lambda: client.hmget(self.key, ["version", "text", "clients_sha"])
        )
        return (
            None if version is None or text is None else (int(version), str(text), str(sha or ""))
        )

    async def _read(self, key: str) -> PushedRules | None:
        """One version's hash and its content, read part by part (each read short): the content
        cannot change under the reader, only disappear once ten newer versions no longer name
        it (then :class:`StorageError`)."""
        client = self._ops.client
        version, text, sha, name = await self._ops.run(
            "rules.pull",
            lambda: client.hmget(key, ["version", "text", "clients_sha", "clients_file"]),
        )
        if version is None or text is None:
            return None
        if not sha:
            return PushedRules(int(version), str(text), None)
        parts_key = self._clients_key(str(sha))
        count = int(await self._ops.run("rules.pull", lambda: client.llen(parts_key)))
        parts: list[str] = []
        for i in range(count):
            part = await self._ops.run("rules.pull", functools.partial(client.lindex, parts_key, i))
            if part is None:
                break
            parts.append(str(part))
        if not count or len(parts) < count:
            raise StorageError(f"redis rules.pull: the clients_file of version {version!s} is gone")
        return PushedRules(int(version), str(text), "".join(parts), str(name or ""))

    async def version(self) -> int | None:
        """The current version number, or ``None`` if nothing was pushed."""
        client = self._ops.client
        version = await self._ops.run("rules.version", lambda: client.hget(self.key, "version"))
        return None if version is None else int(version)

    async def history(self) -> list[Version]:
        """The kept versions, newest first."""
        client = self._ops.client
        numbers = await self._ops.run(
            "rules.history", lambda: client.lrange(self.versions_key, 0, -1)
        )

        async def read() -> list[list[str | None]]:
            async with client.pipeline(transaction=False) as pipe:
                for number in numbers:
                    pipe.hmget(self._version_key(str(number)), list(_ENTRY))
                return list(await pipe.execute())

        rows = await self._ops.run("rules.history", read) if numbers else []
        return [_version(row) for row in rows if row[0] is not None]

    async def _stamp(self) -> tuple[int, str] | None:
        client = self._ops.client
        version, push_id = await self._ops.run(
            "rules.version", lambda: client.hmget(self.key, ["version", "push_id"])
        )
        return None if version is None else (int(version), str(push_id or ""))

    async def watch(
        self,
        callback: Callable[[int], Awaitable[None]],
        *,
        known_version: int | None = None,
    ) -> None:
        """Call ``callback(version)`` whenever the stored version differs from the last one seen.

        Runs until cancelled. Learns of a push through pub/sub, and re-reads the version on every
        (re)subscription and every ``poll_interval_s`` in case a message was lost; Redis outages
        are waited out with backoff. ``known_version`` is the version the caller already has. A
        version counts as seen only when ``callback`` returns: if it raises, the next message or
        poll calls it again. The callback usually calls :meth:`pull`.
        """
        # (version, push id): after Redis lost its data, version numbers start again at 1,
        # and only the random push id tells a new version 1 from the one already seen.
        last: tuple[int, str | None] | None = (
            None if known_version is None else (known_version, None)
        )

        async def check(_message: str = "") -> None:
            nonlocal last
            current = await self._stamp()
            if current is None:
                return
            if last is None or current[0] != last[0] or last[1] not in (None, current[1]):
                await callback(current[0])
            last = current

        subscriber = Subscriber(
            self._ops.client,
            self.channel,
            name="rules",
            on_message=check,
            on_connect=lambda: check(""),
            on_tick=lambda: check(""),
            tick_s=self.poll_interval_s,
        )
        await subscriber.run()


def _version(row: list[str | None]) -> Version:
    fields = dict(zip(_ENTRY, row, strict=True))
    try:
        counts = {str(k): int(v) for k, v in json.loads(fields["counts"] or "{}").items()}
    except (ValueError, TypeError, AttributeError):
        counts = {}
    return Version(
        version=int(fields["version"] or 0),
        pushed_at=float(fields["pushed_at"]) if fields["pushed_at"] else None,
        source=fields["source"] or "",
        host=fields["host"] or "",
        counts=counts,
        clients_file=fields["clients_file"] or "",
        clients_bytes=int(fields["clients_bytes"]) if fields["clients_bytes"] else None,
        rollback_of=int(fields["rollback_of"]) if fields["rollback_of"] else None,
    )
