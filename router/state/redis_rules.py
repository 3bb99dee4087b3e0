"""Routing rules in Redis: pushed by an operator, followed by every replica.

Keys (``P`` is ``storage_prefix``):

- ``P rules`` — hash ``{version, text, pushed_at, source}``; a script bumps ``version`` and
  replaces the text in one step, so a reader never sees the text of one version with the number
  of another.
- ``P rules:changed`` — channel: the new version number, published by the same script.

Validation is the caller's job (``mtt-router rules push`` runs the rules loader first): the store
keeps text, not parsed rules, so every replica parses the exact bytes that were checked.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Awaitable, Callable

import structlog

from router.state.redis_conn import RedisOps
from router.state.redis_pubsub import Subscriber

log = structlog.get_logger("router.state")

RULES_POLL_S = 2.0
"""The watcher re-reads the version this often, in case a pub/sub message was lost."""

_PUSH_LUA = """
local v = redis.call('HINCRBY', KEYS[1], 'version', 1)
redis.call('HSET', KEYS[1], 'text', ARGV[1], 'pushed_at', ARGV[2], 'source', ARGV[3],
           'push_id', ARGV[5])
redis.call('PUBLISH', ARGV[4], v)
return v
"""


class RulesStore:
    """The pushed rules text and its version number."""

    def __init__(self, ops: RedisOps, *, poll_interval_s: float = RULES_POLL_S) -> None:
        self._ops = ops
        self.key = ops.key("rules")
        self.channel = ops.key("rules", "changed")
        self.poll_interval_s = poll_interval_s
        self._push_script = ops.client.register_script(_PUSH_LUA)

    async def push(self, text: str, *, source: str = "") -> int:
        """Store ``text`` as the next version, announce it, and return its number."""
        version = await self._ops.run(
            "rules.push",
            lambda: self._push_script(
                keys=[self.key],
                args=[text, f"{time.time():.3f}", source, self.channel, secrets.token_hex(8)],
            ),
        )
        log.info("rules_pushed", version=int(version), source=source, bytes=len(text))
        return int(version)

    async def pull(self) -> tuple[int, str] | None:
        """``(version, text)`` of the current rules, or ``None`` if nothing was pushed."""
        client = self._ops.client
        version, text = await self._ops.run(
            "rules.pull", lambda: client.hmget(self.key, ["version", "text"])
        )
        if version is None or text is None:
            return None
        return int(version), str(text)

    async def version(self) -> int | None:
        """The current version number, or ``None`` if nothing was pushed."""
        client = self._ops.client
        version = await self._ops.run("rules.version", lambda: client.hget(self.key, "version"))
        return None if version is None else int(version)

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
