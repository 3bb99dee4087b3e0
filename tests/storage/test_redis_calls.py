"""Per-call claims across replicas (with the local fallback) and shared presence."""

from __future__ import annotations

import asyncio
import json
import time

from router.state.memory import LocalClaims
from router.state.redis_claims import RedisCallStore
from router.state.redis_conn import RedisOps
from router.state.redis_presence import RedisPresence
from tests.fixtures.net import RedisServer
from tests.polling import eventually
from tests.storage.conftest import MakeOps, errors


async def test_each_call_is_claimed_once_across_two_replicas(make_ops: MakeOps) -> None:
    """Two replicas (separate connections) racing for each of 50 calls: exactly one wins."""
    one, two = RedisCallStore(make_ops()), RedisCallStore(make_ops())
    for i in range(50):
        results = await asyncio.gather(one.claim(f"call-{i}", 30), two.claim(f"call-{i}", 30))
        assert sorted(results) == [False, True]
    assert errors(one._ops, "claim") == errors(two._ops, "claim") == 0


async def test_claim_key_expires(ops: RedisOps) -> None:
    """The claim key carries the TTL asked for."""
    assert await RedisCallStore(ops).claim("c-ttl", 30)
    assert 0 < await ops.client.pttl("test:claim:c-ttl") <= 30_000


async def test_claim_falls_back_to_memory_while_redis_is_down(
    outage_ops: RedisOps, redis_server: RedisServer
) -> None:
    """Redis stopped: a claim still succeeds once per call on this replica, fast, and counted."""
    claims = RedisCallStore(outage_ops)
    assert await claims.claim("before", 30)
    redis_server.stop()
    started = time.monotonic()
    assert await claims.claim("during", 30)
    elapsed = time.monotonic() - started
    print(f"claim with Redis stopped: {elapsed * 1000:.1f} ms")
    assert elapsed < 0.5
    assert not await claims.claim("during", 30)
    assert not await claims.claim("before", 30)  # claimed via Redis, remembered locally
    assert errors(outage_ops, "claim") == 1
    redis_server.start()
    assert not await claims.claim("during", 30)  # claimed locally, remembered after recovery
    assert await claims.claim("after", 30)


def test_local_claims_expire_and_stay_bounded() -> None:
    """Local claims expire after their TTL and never exceed max_entries."""
    local = LocalClaims(max_entries=3)
    assert local.claim("a", 0)
    assert local.claim("a", 30)  # the zero-TTL claim had already expired
    for call_id in "bcde":
        assert local.claim(call_id, 30)
    assert len(local) == 3
    assert local.claim("a", 30)  # evicted as the oldest


async def test_presence_is_shared_within_a_second(make_ops: MakeOps) -> None:
    """A workplace marked busy on one replica is busy on the other within 1 s, and freed too."""
    one, two = RedisPresence(make_ops()), RedisPresence(make_ops())
    two.start()
    try:
        await asyncio.wait_for(two.subscriber.subscribed.wait(), 2)
        await one.set_busy("wp1", "call-1", 60)
        assert one.busy() == {"wp1"}  # at once, locally
        started = time.monotonic()
        await eventually(lambda: "wp1" in two.busy(), "wp1 busy on the other", timeout_s=1.0)
        seen_after_s = time.monotonic() - started
        print(f"busy seen by the other replica after {seen_after_s * 1000:.1f} ms")
        await one.set_free("wp1", "call-1")
        assert one.busy() == frozenset()
        await eventually(lambda: not two.busy(), "wp1 free on the other", timeout_s=1.0)
    finally:
        await two.aclose()


async def test_presence_snapshot_on_start_and_key_ttl(make_ops: MakeOps) -> None:
    """A replica that starts later loads who is busy; the Redis key expires with its calls."""
    one, two = RedisPresence(make_ops()), RedisPresence(make_ops())
    await one.set_busy("wp1", "c1", 60)
    await one.set_busy("wp2", "c2", 30)
    await one.flush()
    assert 30_000 < await one._ops.client.pttl(one.key) <= 60_000
    two.start()
    try:
        await eventually(lambda: two.busy() == {"wp1", "wp2"}, "the snapshot loaded", timeout_s=2.0)
    finally:
        await two.aclose()


async def test_presence_entries_expire(ops: RedisOps) -> None:
    """A busy mark whose call never finishes expires after its TTL, locally and in Redis."""
    presence = RedisPresence(ops)
    await presence.set_busy("wp1", "c1", 0.05)
    assert presence.busy() == {"wp1"}
    await presence.flush()
    await eventually(lambda: not presence.busy(), "expired locally", timeout_s=2.0)

    async def expired_in_redis() -> bool:
        return await presence.sync() and not presence.busy()

    await eventually(expired_in_redis, "expired in Redis", timeout_s=2.0)

    async def key_gone() -> bool:  # the key's TTL covers its longest member
        return not await ops.client.exists(presence.key)

    await eventually(key_gone, "the presence key expired", timeout_s=1.0)


async def test_a_workplace_on_two_calls_stays_busy_until_both_end(ops: RedisOps) -> None:
    """Freeing one of two calls leaves the workplace busy."""
    presence = RedisPresence(ops)
    await presence.set_busy("wp1", "c1", 60)
    await presence.set_busy("wp1", "c2", 60)
    await presence.set_free("wp1", "c1")
    assert presence.busy() == {"wp1"}
    assert await presence.sync()
    assert presence.busy() == {"wp1"}


async def test_a_call_freed_on_one_replica_is_not_made_busy_again_by_another(
    make_ops: MakeOps,
) -> None:
    """``finished`` written (by one replica) before ``connected`` (by another, behind a load
    balancer or after an outage): the workplace ends up free on both, not busy for hours."""
    one, two = RedisPresence(make_ops()), RedisPresence(make_ops())
    await two.set_free("wp1", "c1")
    await two.flush()
    await one.set_busy("wp1", "c1", 3600)
    assert one.busy() == {"wp1"}  # at once, locally ...
    await one.flush()
    assert one.busy() == frozenset()  # ... until Redis refused it
    assert await one.sync()
    assert await two.sync()
    assert (one.busy(), two.busy()) == (frozenset(), frozenset())
    assert 0 < await one._ops.client.pttl(one.ended_key) <= 3_600_000
    await one.set_busy("wp1", "c2", 60)  # another call on the same workplace still counts
    await one.flush()
    assert await two.sync()
    assert two.busy() == {"wp1"}


async def test_presence_keeps_its_local_view_while_redis_is_down(
    make_ops: MakeOps, redis_server: RedisServer
) -> None:
    """Redis stopped: changes apply locally without raising, and are written back later."""
    one = RedisPresence(make_ops(url=redis_server.url))
    await one.set_busy("wp1", "c1", 60)
    await one.flush()
    redis_server.stop()
    await one.set_busy("wp2", "c2", 60)
    await one.set_free("wp1", "c1")
    assert one.busy() == {"wp2"}
    await one.flush()  # the write fails: kept for write-back
    assert not await one.sync()  # view kept
    assert one.busy() == {"wp2"}
    assert errors(one._ops, "presence.write") >= 1
    redis_server.start()  # an empty Redis: it lost everything
    assert await one.sync()
    assert one.busy() == {"wp2"}
    two = RedisPresence(make_ops(url=redis_server.url))
    assert await two.sync()
    assert two.busy() == {"wp2"}


async def test_presence_ignores_garbage_messages(ops: RedisOps) -> None:
    """A malformed message on the presence channel changes nothing."""
    presence = RedisPresence(ops)
    await presence._on_message("not json")
    await presence._on_message(json.dumps({"op": "busy"}))
    await presence._on_message(json.dumps([["wp1|c1", 1000, 3]]))
    await presence._on_message(json.dumps([["wp1|c1", "soon"]]))
    await presence._on_message(json.dumps(7))
    assert presence.busy() == frozenset()
