"""No-answer re-routes in Redis: the "answered" mark and the hop claims, one atomic step each.

Keys (``P`` is ``storage_prefix``):

- ``P reroute:<call id>`` — hash {``answered``, ``hop``, ``owner``}: set by every replica that
  receives a ``connected`` for the call (``answered``) and by the replica that claims a re-route
  (``hop``: the last one claimed, ``owner``: who). Expires :data:`REROUTE_TTL_S` after its last
  change.

Each operation is one Lua script, so "no ``connected`` seen" and the claim of a hop cannot be
separated by another replica's write. While Redis does not answer, nothing falls back to memory:
a claim raises :class:`~router.errors.StorageError` and the caller does not re-route (a second
re-route, or one after an answer, is worse than none).
"""

from __future__ import annotations

import secrets

from router.state.memory import REROUTE_TTL_S
from router.state.redis_claims import replica_id
from router.state.redis_conn import RedisOps

_MARK_LUA = """
redis.call('HSET', KEYS[1], 'answered', '1')
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return 1
"""

# A hop already at ARGV[1] owned by us is our own claim whose reply was lost and the command
# retried (redis-py retries once after a broken connection): still ours.
_CLAIM_LUA = """
if redis.call('HEXISTS', KEYS[1], 'answered') == 1 then
  return 0
end
local hop = tonumber(redis.call('HGET', KEYS[1], 'hop') or '0')
local want = tonumber(ARGV[1])
if hop > want then
  return 0
end
if hop == want then
  if redis.call('HGET', KEYS[1], 'owner') == ARGV[3] then
    return 1
  end
  return 0
end
redis.call('HSET', KEYS[1], 'hop', ARGV[1], 'owner', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""


class RedisReroutes:
    """:class:`~router.state.protocols.Reroutes` across replicas (see the module docstring)."""

    def __init__(self, ops: RedisOps, *, ttl_s: float = REROUTE_TTL_S) -> None:
        self._ops = ops
        self._ttl_ms = max(1, int(ttl_s * 1000))
        self._mark = ops.client.register_script(_MARK_LUA)
        self._claim = ops.client.register_script(_CLAIM_LUA)
        # Unique per store, not only per process: two stores in one process are two claimants.
        self._owner = f"{replica_id()}:{secrets.token_hex(4)}"

    def key(self, call_id: str) -> str:
        """The call's hash."""
        return self._ops.key("reroute", call_id)

    async def mark_answered(self, call_id: str) -> None:
        """No hop of ``call_id`` may be claimed from now on, by any replica."""
        keys, args = [self.key(call_id)], [self._ttl_ms]
        await self._ops.run("reroute.mark", lambda: self._mark(keys=keys, args=args))

    async def claim_hop(self, call_id: str, hop: int) -> bool:
        """True for the one replica that claims ``hop`` of a call nobody answered."""
        keys = [self.key(call_id)]
        args: list[str | int] = [hop, self._ttl_ms, self._owner]
        claimed = await self._ops.run("reroute.claim", lambda: self._claim(keys=keys, args=args))
        return bool(claimed)
