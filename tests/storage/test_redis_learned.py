"""The learned map in Redis (router/state/redis_learned.py): one key per caller with a TTL, read
in the claim's pipelined round trip, shared by replicas, written in the background."""

from __future__ import annotations

import time
from typing import Any

import pytest

from router.context import Read
from router.sources import CLIENTS_SPACE, LEARNED_SPACE
from router.state.redis_claims import RedisCallStore
from router.state.redis_clients import ClientMap
from router.state.redis_conn import RedisOps
from router.state.redis_learned import RedisLearned
from tests.fixtures.net import RedisServer
from tests.polling import eventually
from tests.storage.conftest import MakeOps

NUMBER = "79990001122"
LEARNED = Read(LEARNED_SPACE, NUMBER)
CLIENT = Read(CLIENTS_SPACE, NUMBER)
DAY_S = 86_400.0


async def taught(learned: RedisLearned, number: str = NUMBER) -> str | None:
    entry = await learned.get(number)
    return entry.manager if entry is not None else None


class RoundTrips:
    """Counts what a client sends: pipelines executed, and commands sent on their own."""

    def __init__(self, ops: RedisOps, monkeypatch: pytest.MonkeyPatch) -> None:
        self.pipelines = 0
        self.single: list[str] = []
        client = ops.client
        make_pipeline = client.pipeline

        def pipeline(*args: Any, **kwargs: Any) -> Any:
            pipe = make_pipeline(*args, **kwargs)
            execute = pipe.execute

            async def counted(*a: Any, **k: Any) -> Any:
                self.pipelines += 1
                return await execute(*a, **k)

            pipe.execute = counted  # type: ignore[method-assign]
            return pipe

        monkeypatch.setattr(client, "pipeline", pipeline)
        for name in ("get", "set", "hget"):
            monkeypatch.setattr(client, name, self._single(name, getattr(client, name)))

    def _single(self, name: str, command: Any) -> Any:
        async def sent(*args: Any, **kwargs: Any) -> Any:
            self.single.append(name)
            return await command(*args, **kwargs)

        return sent


async def test_the_learned_read_travels_with_the_claim(
    ops: RedisOps, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Claim, client entry and learned entry: one pipelined round trip, nothing else."""
    learned = RedisLearned(ops)
    learned.remember(NUMBER, "sidorov", DAY_S)
    await eventually(lambda: taught(learned), "the lesson is stored")
    store = RedisCallStore(
        ops, spaces={CLIENTS_SPACE: ClientMap(ops)}, keys={LEARNED_SPACE: learned}
    )
    trips = RoundTrips(ops, monkeypatch)
    gathered = await store.claim_and_read("call-1", 30, [CLIENT, LEARNED])
    assert (gathered.claimed, dict(gathered.values)) == (True, {CLIENT: None, LEARNED: "sidorov"})
    assert (trips.pipelines, trips.single) == (1, [])
    nobody = await store.claim_and_read("call-2", 30, [Read(LEARNED_SPACE, "70000000000")])
    assert dict(nobody.values) == {Read(LEARNED_SPACE, "70000000000"): None}


async def test_a_lesson_learned_on_one_replica_is_read_on_the_other(make_ops: MakeOps) -> None:
    one, two = make_ops(), make_ops()
    RedisLearned(one).remember(NUMBER, "sidorov", DAY_S)
    store = RedisCallStore(two, keys={LEARNED_SPACE: RedisLearned(two)})

    async def read() -> str | None:
        gathered = await store.claim_and_read(f"call-{time.monotonic()}", 30, [LEARNED])
        return gathered.values.get(LEARNED)

    assert await eventually(read, "the other replica reads it") == "sidorov"


async def test_get_shows_when_it_was_learned_and_when_it_expires(ops: RedisOps) -> None:
    learned = RedisLearned(ops)
    before = time.time()
    learned.remember(NUMBER, "sidorov", 30 * DAY_S)
    await learned.aclose()  # waits for the write in flight
    entry = await learned.get(NUMBER)
    assert entry is not None
    assert entry.manager == "sidorov"
    assert before - 1 <= entry.learned_at <= time.time() + 1
    assert entry.expires_at - entry.learned_at == pytest.approx(30 * DAY_S, abs=60)
    assert await ops.client.pttl(ops.key("learned", NUMBER)) > 29 * DAY_S * 1000


async def test_redis_forgets_an_expired_lesson(ops: RedisOps) -> None:
    learned = RedisLearned(ops)
    learned.remember(NUMBER, "sidorov", 0.2)
    await learned.aclose()
    assert await eventually(lambda: taught(learned), "stored") == "sidorov"
    await eventually(lambda: _gone(learned), "expired by its TTL")


async def _gone(learned: RedisLearned) -> bool:
    return await learned.get(NUMBER) is None


async def test_forget_drops_the_entry(ops: RedisOps) -> None:
    learned = RedisLearned(ops)
    learned.remember(NUMBER, "sidorov", DAY_S)
    await learned.aclose()
    assert await learned.forget(NUMBER)
    assert not await learned.forget(NUMBER)
    assert await learned.get(NUMBER) is None


async def test_redis_down_leaves_the_read_unanswered_and_drops_the_lesson(
    outage_ops: RedisOps, redis_server: RedisServer
) -> None:
    """Stopped Redis: the claim falls back to memory with the learned read unanswered (the
    rules decide without it); a lesson is logged as not stored, never raised."""
    learned = RedisLearned(outage_ops)
    store = RedisCallStore(outage_ops, keys={LEARNED_SPACE: learned})
    redis_server.stop()
    gathered = await store.claim_and_read("call-1", 30, [LEARNED])
    assert (gathered.claimed, dict(gathered.values)) == (True, {})
    learned.remember(NUMBER, "sidorov", DAY_S)
    await learned.aclose()
    redis_server.start()
    assert await learned.get(NUMBER) is None
