"""Tokens and OAuth ``state`` values in Redis, shared by every replica.

Keys (``P`` is ``storage_prefix``):

- ``P tokens`` — hash ``{version, json}``: the token set and its version, changed only by a
  compare-and-set script, so an older set never overwrites a newer one.
- ``P tokens:lock`` — the refresh lock: a random owner token with a PX expiry (a crashed holder
  frees it by itself), released by a script that deletes it only for its owner.
- ``P oauth:state:<state>`` — a pending OAuth ``state`` with a PX expiry, redeemed with GETDEL.

Replication is asynchronous: a primary that dies right after a token write may take it along, and
MTT has already retired the refresh token the new set replaced. So when the primary has a replica,
a save waits (``WAIT 1``, on the connection that wrote) until one has it, at most the role's
``replica_wait_ms``; a primary without a replica, or a replica that did not acknowledge in time,
is logged once (``tokens_not_replicated``) until a save is acknowledged again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from typing import Any

import structlog
from redis.exceptions import ResponseError

from router.errors import StorageError
from router.mtt.tokens import TokenSet
from router.state.redis_conn import RedisOps

log = structlog.get_logger("router.state")

NO_REPLICA = (
    "the primary has no replica: the token set lives on that one server "
    "(its persistence settings decide what a crash keeps)"
)

LOCK_TTL_S = 30.0
"""The refresh lock frees itself after this long, should its holder die mid-refresh."""

LOCK_WAIT_S = 10.0
"""How long :meth:`RedisTokenStore.refresh_lock` waits for another holder before giving up."""

MAX_STATE_LEN = 512

# Stores ARGV[3] unless the stored version differs from ARGV[1] ('' = store unconditionally).
# The stored version always grows: the proposed ARGV[2], or one more than the current one.
_SAVE_LUA = """
local cur = tonumber(redis.call('HGET', KEYS[1], 'version'))
if ARGV[1] ~= '' and cur ~= tonumber(ARGV[1]) then
  return -1
end
local v = tonumber(ARGV[2])
if cur ~= nil and v <= cur then
  v = cur + 1
end
redis.call('HSET', KEYS[1], 'version', v, 'json', ARGV[3])
return v
"""

_RELEASE_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class RedisTokenStore:
    """:class:`~router.state.TokenStore` in Redis: CAS on the version, a cross-replica lock."""

    def __init__(
        self, ops: RedisOps, *, lock_ttl_s: float = LOCK_TTL_S, lock_wait_s: float = LOCK_WAIT_S
    ) -> None:
        self._ops = ops
        self.key = ops.key("tokens")
        self.lock_key = ops.key("tokens", "lock")
        self.lock_ttl_s = lock_ttl_s
        self.lock_wait_s = lock_wait_s
        self._save_script = ops.client.register_script(_SAVE_LUA)
        self._release_script = ops.client.register_script(_RELEASE_LUA)
        self._unreplicated_logged = False
        # Coroutines of this process queue here first, so only one per replica polls Redis.
        self._local_lock = asyncio.Lock()

    async def load(self) -> TokenSet | None:
        """The stored set, or ``None`` if none (or unreadable); StorageError if Redis fails."""
        client = self._ops.client
        version, raw = await self._ops.run(
            "tokens.load", lambda: client.hmget(self.key, ["version", "json"])
        )
        if raw is None:
            return None
        try:
            data: dict[str, Any] = json.loads(raw)
            data["version"] = int(str(version))
            return TokenSet.from_json(data)
        except (ValueError, TypeError, KeyError) as exc:
            log.error("tokens_unreadable", key=self.key, error=str(exc))
            return None

    async def save(self, tokens: TokenSet, *, expected_version: int | None) -> bool:
        """Store ``tokens`` if the stored version is ``expected_version`` (``None``: always).

        The stored version is ``tokens.version`` or, if that is not above the current version,
        one more than the current one; False (nothing stored) when another writer got there first.
        """
        data = tokens.to_json()
        del data["version"]
        expected = "" if expected_version is None else str(expected_version)
        result, acked, why = await self._ops.run(
            "tokens.save", lambda: self._write(expected, tokens.version, json.dumps(data))
        )
        self._note_replication(acked, why)
        stored = int(result) >= 0
        if not stored:
            log.info("tokens_save_conflict", expected_version=expected_version)
        return stored

    async def _write(self, expected: str, version: int, text: str) -> tuple[int, int, str]:
        """The CAS script, then ``WAIT 1`` on the same connection when the primary has a
        replica: ``(script result, replicas that acknowledged, why none did)``."""
        client = self._ops.client
        try:
            info = await client.info("replication")
            replicas = int(info.get("connected_slaves", 0))
        except ResponseError as exc:  # INFO refused (a managed Redis): write without waiting
            replicas, why = 0, f"INFO replication refused ({exc})"
        else:
            why = NO_REPLICA
        async with client.pipeline(transaction=False) as pipe:
            await self._save_script(keys=[self.key], args=[expected, version, text], client=pipe)
            if replicas:
                pipe.wait(1, self._ops.timeouts.replica_wait_ms)
            answers = await pipe.execute(raise_on_error=False)
        if isinstance(answers[0], BaseException):
            raise answers[0]
        acked = 0
        if replicas:
            if isinstance(answers[1], BaseException):
                why = f"WAIT refused ({answers[1]})"
            else:
                acked = int(answers[1])
                why = f"no replica of {replicas} acknowledged within "
                why += f"{self._ops.timeouts.replica_wait_ms} ms"
        return int(answers[0]), acked, why

    def _note_replication(self, acked: int, why: str) -> None:
        """Log once when a token write was not acknowledged by a replica, and when one is again."""
        if acked:
            if self._unreplicated_logged:
                log.info("tokens_replicated", replicas=acked)
            self._unreplicated_logged = False
        elif not self._unreplicated_logged:
            self._unreplicated_logged = True
            log.warning("tokens_not_replicated", reason=why)

    def refresh_lock(self) -> AbstractAsyncContextManager[None]:
        """Held while refreshing; excludes other coroutines here and other replicas.

        Waits up to ``lock_wait_s``, then raises :class:`StorageError` (as it does when Redis is
        unreachable). The lock expires after ``lock_ttl_s`` even if its holder never releases it.
        """
        return self._hold_lock()

    @contextlib.asynccontextmanager
    async def _hold_lock(self) -> AsyncIterator[None]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.lock_wait_s
        try:
            async with asyncio.timeout(self.lock_wait_s):
                await self._local_lock.acquire()
        except TimeoutError:
            raise StorageError("token refresh lock: still held by this process") from None
        try:
            owner = secrets.token_hex(16)
            await self._acquire(owner, deadline)
            try:
                yield
            finally:
                await self._release(owner)
        finally:
            self._local_lock.release()

    async def _acquire(self, owner: str, deadline: float) -> None:
        loop = asyncio.get_running_loop()
        client = self._ops.client
        ttl_ms = int(self.lock_ttl_s * 1000)
        delay = 0.02
        while True:
            got = await self._ops.run(
                "tokens.lock", lambda: client.set(self.lock_key, owner, nx=True, px=ttl_ms)
            )
            if got:
                return
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise StorageError(
                    f"token refresh lock: held by another replica for over {self.lock_wait_s:g} s"
                )
            await asyncio.sleep(min(delay, remaining))
            delay = min(delay * 2, 0.25)

    async def _release(self, owner: str) -> None:
        try:
            released = await self._ops.run(
                "tokens.unlock",
                lambda: self._release_script(keys=[self.lock_key], args=[owner]),
            )
        except StorageError as exc:
            log.warning("token_lock_release_failed", error=str(exc))  # it expires by itself
            return
        if not released:
            # The refresh outlived the lock; the version CAS still refuses a stale write.
            log.warning("token_lock_expired_while_held", lock_ttl_s=self.lock_ttl_s)


class RedisOAuthStateStore:
    """:class:`~router.state.OAuthStateStore` in Redis: any replica may receive the callback."""

    def __init__(self, ops: RedisOps) -> None:
        self._ops = ops

    def _key(self, state: str) -> str:
        return self._ops.key("oauth", "state", state)

    async def put(self, state: str, ttl_s: float) -> None:
        """Remember ``state`` for ``ttl_s`` seconds."""
        if not state or len(state) > MAX_STATE_LEN:
            raise ValueError("an OAuth state must be 1 to 512 characters")
        client = self._ops.client
        ttl_ms = max(1, int(ttl_s * 1000))
        await self._ops.run("oauth.put", lambda: client.set(self._key(state), "1", px=ttl_ms))

    async def redeem(self, state: str) -> bool:
        """Forget ``state`` atomically (GETDEL); True only the first time and before it expired."""
        if not state or len(state) > MAX_STATE_LEN:
            return False
        client = self._ops.client
        value = await self._ops.run("oauth.redeem", lambda: client.getdel(self._key(state)))
        return value is not None
