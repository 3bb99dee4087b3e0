"""No-answer re-routes in Redis: each hop claimed by one replica, none after an answer."""

from __future__ import annotations

import asyncio

import pytest

from router.errors import StorageError
from router.state.redis_conn import RedisOps
from router.state.redis_reroutes import RedisReroutes
from tests.fixtures.net import RedisServer
from tests.storage.conftest import MakeOps, errors


async def test_each_hop_is_claimed_once_across_two_replicas(make_ops: MakeOps) -> None:
    """Two replicas racing for hop 1, then hop 2, of each of 50 calls: exactly one wins each;
    an earlier hop can no longer be claimed once a later one was."""
    one, two = RedisReroutes(make_ops()), RedisReroutes(make_ops())
    for hop in (1, 2):
        for i in range(50):
            results = await asyncio.gather(
                one.claim_hop(f"call-{i}", hop), two.claim_hop(f"call-{i}", hop)
            )
            assert sorted(results) == [False, True]
    assert [await two.claim_hop("call-0", 1), await one.claim_hop("call-0", 1)] == [False, False]


async def test_an_answered_call_is_never_claimed(make_ops: MakeOps) -> None:
    """A ``connected`` marked by one replica: the other can claim no hop of that call."""
    one, two = RedisReroutes(make_ops()), RedisReroutes(make_ops())
    await two.mark_answered("answered")
    assert not await one.claim_hop("answered", 1)
    assert not await two.claim_hop("answered", 1)
    assert await one.claim_hop("other", 1)
    await two.mark_answered("other")  # answered after hop 1: no hop 2
    assert not await one.claim_hop("other", 2)


async def test_a_retried_claim_is_still_ours(ops: RedisOps) -> None:
    """The same store asking for the same hop again (redis-py retrying a command whose reply
    was lost) gets True: the claim is its own."""
    reroutes = RedisReroutes(ops)
    assert await reroutes.claim_hop("c", 1)
    assert await reroutes.claim_hop("c", 1)
    assert not await RedisReroutes(ops).claim_hop("c", 1)


async def test_the_key_expires(ops: RedisOps) -> None:
    """The per-call hash carries the store's TTL, set by a mark and by a claim alike."""
    reroutes = RedisReroutes(ops, ttl_s=60)
    await reroutes.mark_answered("marked")
    assert await reroutes.claim_hop("claimed", 1)
    for call_id in ("marked", "claimed"):
        assert 0 < await ops.client.pttl(reroutes.key(call_id)) <= 60_000
    assert reroutes.key("marked") == "test:reroute:marked"


async def test_no_claim_while_redis_is_down(
    outage_ops: RedisOps, redis_server: RedisServer
) -> None:
    """Redis stopped: a claim raises StorageError (the caller does not re-route), counted."""
    reroutes = RedisReroutes(outage_ops)
    redis_server.stop()
    with pytest.raises(StorageError):
        await reroutes.claim_hop("during", 1)
    with pytest.raises(StorageError):
        await reroutes.mark_answered("during")
    assert errors(outage_ops, "reroute.claim") == errors(outage_ops, "reroute.mark") == 1
    redis_server.start()
    assert await reroutes.claim_hop("after", 1)
