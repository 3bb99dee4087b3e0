"""open_redis_stores: one pool for every store, health at start, clean close; the directory."""

from __future__ import annotations

import asyncio
import contextlib

from router.config import Config, MttConfig
from router.metrics import Metrics
from router.state.redis import RedisStores, open_redis_stores
from router.state.redis_conn import RedisOps
from router.state.redis_directory import DirectoryStore
from tests.fixtures.net import free_port
from tests.storage.conftest import MakeOps


def make_config(storage: str) -> Config:
    mtt = MttConfig(client_id="id", client_secret="secret", redirect_uri="https://r.example/mtt")
    return Config(mtt=mtt, storage=storage, storage_prefix="stores:")


async def test_open_redis_stores_shares_one_pool(redis_url: str, make_ops: MakeOps) -> None:
    """Every store works on the one pool; background followers run; aclose stops everything."""
    metrics = Metrics()
    stores: RedisStores = await open_redis_stores(make_config(redis_url), metrics)
    try:
        assert stores.health.up
        assert metrics.registry.get_sample_value("mtt_router_storage_up") == 1
        assert await stores.ping()
        assert await stores.calls.claim("call-1", 30)
        await stores.presence.set_busy("wp1", "call-1", 60)
        await stores.presence.flush()
        await stores.clients.set("79219462761", "ivanov")
        assert await stores.rules.push("text") == 1
        await asyncio.wait_for(stores.clients.subscriber.subscribed.wait(), 2)
        await asyncio.wait_for(stores.presence.subscriber.subscribed.wait(), 2)
        keys = set(await make_ops().client.keys("*"))
        assert keys == {
            "stores:claim:call-1",
            "stores:presence",
            "stores:clients",
            "stores:rules",
            "stores:rules:versions",  # the pushed versions kept for rollback
            "stores:rules:v:1",
        }
    finally:
        await stores.aclose()
    assert stores.probe is not None
    assert stores.probe._task is None
    assert stores.clients.subscriber._task is None
    assert not stores.clients._cache_live


async def test_open_redis_stores_with_redis_down_does_not_fail() -> None:
    """A dead Redis at start-up gives stores that report down, not an exception."""
    stores = await open_redis_stores(make_config(f"redis://127.0.0.1:{free_port()}/0"), Metrics())
    try:
        assert not stores.health.up
        assert stores.presence.busy() == frozenset()
        assert await stores.calls.claim("call-1", 30)  # the local fallback
    finally:
        await stores.aclose()


async def test_cli_role_starts_no_background_tasks(redis_url: str) -> None:
    """The CLI's stores neither probe nor subscribe."""
    stores = await open_redis_stores(make_config(redis_url), Metrics(), role="cli")
    try:
        assert stores.probe is None
        assert stores.clients.subscriber._task is None
    finally:
        await stores.aclose()


async def test_directory_save_load_versions(ops: RedisOps) -> None:
    """Each save is the next version of its kind, loads back as JSON, with a timestamp."""
    directory = DirectoryStore(ops)
    assert await directory.load("numbers") is None
    assert await directory.save("numbers", ["78124241500"]) == 1
    assert await directory.save("numbers", ["78124241500", "78124241501"]) == 2
    assert await directory.save("workplaces", {"883140777716581": "Иван"}) == 1
    snapshot = await directory.load("numbers")
    assert snapshot is not None
    assert (snapshot.version, snapshot.data) == (2, ["78124241500", "78124241501"])
    assert snapshot.updated_at > 0
    assert await directory.versions(["numbers", "workplaces", "other"]) == {
        "numbers": 2,
        "workplaces": 1,
        "other": None,
    }


async def test_directory_watch_reports_saves_of_other_replicas(make_ops: MakeOps) -> None:
    """A watcher is told of another replica's save within a second."""
    writer, reader = DirectoryStore(make_ops()), DirectoryStore(make_ops(), poll_interval_s=60)
    await writer.save("numbers", [])
    seen: asyncio.Queue[tuple[str, int]] = asyncio.Queue()

    async def changed(kind: str, version: int) -> None:
        seen.put_nowait((kind, version))

    task = asyncio.create_task(reader.watch(changed))
    try:
        assert await asyncio.wait_for(seen.get(), 2) == ("numbers", 1)
        await writer.save("workplaces", {})
        assert await asyncio.wait_for(seen.get(), 1) == ("workplaces", 1)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
