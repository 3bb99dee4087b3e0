"""Presence written in batches: one script call and one message per batch, in order, and
replicas that still agree (the other presence tests are in test_redis_calls.py)."""

from __future__ import annotations

import asyncio
import random
from collections import defaultdict
from collections.abc import AsyncIterator

import pytest

from router.state.redis_conn import RedisOps
from router.state.redis_presence import RedisPresence
from tests.polling import eventually
from tests.storage.conftest import MakeOps


async def commandstats(ops: RedisOps) -> dict[str, int]:
    """Calls per command this Redis has run, less those that failed (a script's first EVALSHA
    on a fresh server is answered NOSCRIPT, then loaded and sent again)."""
    stats = await ops.client.info("commandstats")
    return {
        name.removeprefix("cmdstat_"): int(entry["calls"]) - int(entry.get("failed_calls", 0))
        for name, entry in stats.items()
        if isinstance(entry, dict)
    }


@pytest.fixture
async def follower(make_ops: MakeOps) -> AsyncIterator[RedisPresence]:
    """A replica following the presence channel (subscribed before the test writes)."""
    presence = RedisPresence(make_ops())
    presence.start()
    try:
        await asyncio.wait_for(presence.subscriber.subscribed.wait(), 2)
        yield presence
    finally:
        await presence.aclose()


async def test_a_batch_is_one_write_in_the_order_the_changes_were_made(
    make_ops: MakeOps, ops: RedisOps, follower: RedisPresence
) -> None:
    """Eight changes made within one flush window: one EVALSHA and one PUBLISH, applied in order.
    A call freed right after it was marked busy ends free, a later call of the same workplace
    busy; a "busy" after the call's own "free" is refused and undone here. The local view follows
    each change at once; the follower ends with the same view as Redis."""
    one = RedisPresence(make_ops(), flush_s=0.2)
    assert await follower.sync()  # its snapshot on subscribing is done (and the next is 2 s off)
    before = await commandstats(ops)
    await one.set_busy("wp1", "c1", 60)
    await one.set_free("wp1", "c1")
    await one.set_busy("wp1", "c2", 60)
    await one.set_busy("wp2", "c3", 60)
    await one.set_free("wp2", "c3")
    await one.set_busy("wp3", "c4", 60)
    await one.set_free("wp3", "c4")
    await one.set_busy("wp3", "c4", 60)  # a late "connected" after its "finished"
    assert one.busy() == {"wp1", "wp3"}  # at once, as made
    await one.flush()
    after = await commandstats(ops)
    written = {name: after[name] - before.get(name, 0) for name in ("evalsha", "publish")}
    assert written == {"evalsha": 1, "publish": 1}
    assert one.busy() == {"wp1"}  # the refused "busy" undone
    assert await ops.client.zrange(one.key, 0, -1) == ["wp1|c2"]
    assert set(await ops.client.zrange(one.ended_key, 0, -1)) == {"wp1|c1", "wp2|c3", "wp3|c4"}
    await eventually(lambda: follower.busy() == {"wp1"}, "the follower applied the batch")
    assert follower.view.calls("wp1") == ("c2",)
    await one.aclose()


async def test_every_batch_carries_what_was_queued_meanwhile(ops: RedisOps) -> None:
    """Changes made while a write is in flight go in the next one: 300 changes from 100 tasks
    take far fewer writes than changes, and Redis ends with exactly the calls still on."""
    presence = RedisPresence(ops, flush_s=0.005)
    before = await commandstats(ops)

    async def call(i: int) -> None:
        await presence.set_busy(f"wp{i % 10}", f"c{i}", 60)
        await asyncio.sleep(0.001 * (i % 7))
        if i % 3:
            await presence.set_free(f"wp{i % 10}", f"c{i}")

    await asyncio.gather(*(call(i) for i in range(100)))
    await presence.flush()
    writes = (await commandstats(ops))["evalsha"] - before.get("evalsha", 0)
    assert 1 <= writes < 50
    on = {f"wp{i % 10}|c{i}" for i in range(100) if not i % 3}
    assert set(await ops.client.zrange(presence.key, 0, -1)) == on
    assert presence.busy() == {member.partition("|")[0] for member in on}
    await presence.aclose()


async def test_replicas_behind_a_load_balancer_converge(make_ops: MakeOps) -> None:
    """Two replicas, each call's "busy" and "free" landing on either one at random (the free
    sometimes first), batches interleaving: once written, both views, and a third replica's
    snapshot, hold exactly the calls that are still on."""
    rng = random.Random(7)
    # No periodic snapshot within the test: the messages alone must bring them together.
    one, two = (RedisPresence(make_ops(), flush_s=0.003, sync_interval_s=600) for _ in range(2))
    for replica in (one, two):
        replica.start()
    try:
        for replica in (one, two):
            await asyncio.wait_for(replica.subscriber.subscribed.wait(), 2)
        on: dict[str, set[str]] = defaultdict(set)
        for i in range(400):
            workplace, call = f"wp{rng.randrange(25)}", f"c{i}"
            ends = rng.random() < 0.7
            first, second = rng.choice((one, two)), rng.choice((one, two))
            if ends and rng.random() < 0.2:  # "finished" written before "connected"
                await second.set_free(workplace, call)
                await first.set_busy(workplace, call, 60)
            else:
                await first.set_busy(workplace, call, 60)
                if ends:
                    if rng.random() < 0.5:
                        await asyncio.sleep(rng.random() * 0.004)
                    await second.set_free(workplace, call)
            if not ends:
                on[workplace].add(call)
            if rng.random() < 0.1:
                await asyncio.sleep(0.002)
        expected = frozenset(workplace for workplace, calls in on.items() if calls)
        await one.flush()
        await two.flush()
        want = {workplace: calls for workplace, calls in on.items() if calls}

        def held(replica: RedisPresence) -> dict[str, set[str]]:
            return {w: set(replica.view.calls(w)) for w in replica.busy()}

        await eventually(
            lambda: held(one) == want and held(two) == want, "both hold the calls still on"
        )
        assert one.busy() == two.busy() == expected
        three = RedisPresence(make_ops())
        assert await three.sync()
        assert held(three) == want
    finally:
        for replica in (one, two):
            await replica.aclose()
