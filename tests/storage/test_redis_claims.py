"""The claim of a parked call and the reads its decision needs: one Redis step, and outages."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.asyncio.connection import AbstractConnection

from router.context import Read
from router.rules.loader import load_rules
from router.rules.model import Rules
from router.sources import CLIENTS_SPACE, DEFAULT_SOURCES, LEARNED_SPACE, in_order, reads_for
from router.state.redis_claims import RedisCallStore
from router.state.redis_clients import ClientMap
from router.state.redis_conn import RedisOps
from router.state.redis_learned import RedisLearned
from tests.fixtures.net import RedisServer
from tests.polling import eventually
from tests.storage.conftest import MakeOps, errors

NUMBER = "79219462761"
READ = Read(CLIENTS_SPACE, NUMBER)


@pytest.fixture
async def client_map(outage_ops: RedisOps) -> AsyncIterator[ClientMap]:
    """A client map following changes (its cache is live), on the private redis-server."""
    clients = ClientMap(outage_ops)
    clients.start()
    try:
        await asyncio.wait_for(clients.subscriber.subscribed.wait(), 2)
        yield clients
    finally:
        await clients.aclose()


async def commands(ops: RedisOps, name: str) -> int:
    """How many ``name`` commands this Redis has run."""
    stats = await ops.client.info("commandstats")
    entry = stats.get(f"cmdstat_{name}")
    return int(entry["calls"]) if isinstance(entry, dict) else 0


async def test_reads_travel_with_the_claim_and_cached_ones_stay_home(
    outage_ops: RedisOps, client_map: ClientMap
) -> None:
    """The first call asks Redis for the claim and the client entry; the next reads the cache."""
    await client_map.set(NUMBER, "ivanov")
    store = RedisCallStore(outage_ops, spaces={CLIENTS_SPACE: client_map})
    sets, hgets = await commands(outage_ops, "set"), await commands(outage_ops, "hget")
    first = await store.claim_and_read("call-1", 30, [READ])
    assert (first.claimed, dict(first.values)) == (True, {READ: "ivanov"})
    asked = (await commands(outage_ops, "set") - sets, await commands(outage_ops, "hget") - hgets)
    assert asked == (1, 1)
    second = await store.claim_and_read("call-2", 30, [READ])
    assert dict(second.values) == {READ: "ivanov"}
    assert await commands(outage_ops, "hget") - hgets == 1  # answered from the cache


async def test_a_read_of_a_space_the_storage_does_not_keep_is_none(ops: RedisOps) -> None:
    """A space with no hash behind it is answered None, without a round trip for it."""
    store = RedisCallStore(ops)
    gathered = await store.claim_and_read("call-1", 30, [Read("learned", NUMBER)])
    assert (gathered.claimed, dict(gathered.values)) == (True, {Read("learned", NUMBER): None})


async def test_the_second_replica_gets_no_claim_and_no_reads(make_ops: MakeOps) -> None:
    """Two replicas claiming one call: one wins; the loser reads nothing (it decides nothing)."""
    one, two = RedisCallStore(make_ops()), RedisCallStore(make_ops())
    first = await one.claim_and_read("call-1", 30, [READ])
    second = await two.claim_and_read("call-1", 30, [READ])
    assert (first.claimed, second.claimed, dict(second.values)) == (True, False, {})


async def test_redis_down_claims_locally_and_serves_what_the_cache_knows(
    outage_ops: RedisOps, client_map: ClientMap, redis_server: RedisServer
) -> None:
    """Redis stopped: the claim falls back to memory in one failed step; a cached entry still
    answers, an uncached one is left unanswered (the rules decide); the claim is kept locally."""
    await client_map.set(NUMBER, "ivanov")
    store = RedisCallStore(outage_ops, spaces={CLIENTS_SPACE: client_map})
    assert (await store.claim_and_read("warm", 30, [READ])).values == {READ: "ivanov"}
    redis_server.stop()
    await eventually(
        lambda: not client_map.subscriber.subscribed.is_set(),
        "the subscriber notices Redis is gone",
        timeout_s=2.0,
    )
    unknown = Read(CLIENTS_SPACE, "79990000000")
    gathered = await store.claim_and_read("during", 30, [READ, unknown])
    assert (gathered.claimed, dict(gathered.values)) == (True, {READ: "ivanov"})
    assert errors(outage_ops, "claim") == 1  # the claim and both reads: one operation
    assert not (await store.claim_and_read("during", 30, [READ])).claimed


async def test_a_claim_whose_reply_was_lost_is_still_ours(ops: RedisOps) -> None:
    """SET NX landed but its reply was lost and the command retried: the key names this store,
    so the call is claimed, not taken for another replica's."""
    store = RedisCallStore(ops)
    await ops.client.set(ops.key("claim", "call-1"), store._owner, px=30_000)
    assert (await store.claim_and_read("call-1", 30, [])).claimed


async def test_a_failing_read_does_not_hide_the_claims_answer(
    make_ops: MakeOps, ops: RedisOps
) -> None:
    """A read that errors (wrong type) leaves the read unanswered; the claim's own answer stands:
    the second replica still gets claimed=False."""
    clients = ClientMap(ops)
    await ops.client.set(clients.key, "not a hash")
    one = RedisCallStore(make_ops(), spaces={CLIENTS_SPACE: ClientMap(ops)})
    two = RedisCallStore(make_ops(), spaces={CLIENTS_SPACE: ClientMap(ops)})
    first = await one.claim_and_read("call-1", 30, [READ])
    second = await two.claim_and_read("call-1", 30, [READ])
    assert (first.claimed, dict(first.values)) == (True, {})
    assert second.claimed is False


LEARN_RULES = load_rules(
    """\
version: 2
timezone: Europe/Moscow
managers:
  ivanov:  {workplace: "101"}
  petrova: {workplace: "102"}
learn: {min_talk_s: 10, ttl_days: 30}
fallback:
  managers: []
  otherwise: pbx
"""
)
NO_LEARN_RULES = load_rules(
    """\
version: 2
timezone: Europe/Moscow
managers:
  ivanov:  {workplace: "101"}
fallback:
  managers: []
  otherwise: pbx
"""
)


async def server_counts(ops: RedisOps) -> tuple[dict[str, int], int]:
    """Calls per command and read events (round trips) so far, from one ``INFO all``."""
    info = await ops.client.info("all")
    calls = {
        name.removeprefix("cmdstat_"): int(stats["calls"])
        for name, stats in info.items()
        if name.startswith("cmdstat_") and isinstance(stats, dict)
    }
    return calls, int(info["total_reads_processed"])


async def test_the_decisions_storage_step_is_one_round_trip(
    ops: RedisOps, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the engine hands the storage for a parked call under rules that learn (the claim,
    the client map's entry, the learned entry) reaches Redis as ONE send from this process and
    one read event on the server, running SET, HGET and GET and nothing else. Rules without
    ``learn`` leave the learned read out: SET and HGET."""
    clients, learned = ClientMap(ops), RedisLearned(ops)
    await clients.set(NUMBER, "ivanov")
    learned.remember(NUMBER, "petrova", 3600)
    await learned.aclose()  # waits for the write
    store = RedisCallStore(ops, spaces={CLIENTS_SPACE: clients}, keys={LEARNED_SPACE: learned})
    sends: list[int] = []
    send = AbstractConnection.send_packed_command

    async def counted(self: AbstractConnection, command: Any, check_health: bool = True) -> None:
        sends.append(1)
        await send(self, command, check_health)

    monkeypatch.setattr(AbstractConnection, "send_packed_command", counted)

    async def step(
        call_id: str, rules: Rules
    ) -> tuple[dict[Read, str | None], int, dict[str, int]]:
        reads = reads_for(NUMBER, in_order(rules, DEFAULT_SOURCES), rules)
        calls, trips = await server_counts(ops)
        sends.clear()
        gathered = await store.claim_and_read(call_id, 30, reads)
        assert gathered.claimed
        sent = len(sends)
        calls_after, trips_after = await server_counts(ops)
        delta = {n: c - calls.get(n, 0) for n, c in calls_after.items() if c > calls.get(n, 0)}
        delta["info"] -= 1  # the second INFO itself
        assert trips_after - trips - 1 == 1  # one read event besides that INFO
        return dict(gathered.values), sent, {n: c for n, c in delta.items() if c}

    learned_read = Read(LEARNED_SPACE, NUMBER)
    assert await step("call-1", LEARN_RULES) == (
        {READ: "ivanov", learned_read: "petrova"},
        1,
        {"set": 1, "hget": 1, "get": 1},
    )
    assert await step("call-2", NO_LEARN_RULES) == ({READ: "ivanov"}, 1, {"set": 1, "hget": 1})
