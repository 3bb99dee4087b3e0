"""Rules pushed to Redis: versions, pull, and watchers told of new versions within a second."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import pytest

from router.state.redis_conn import RedisOps
from router.state.redis_rules import RulesStore
from tests.fixtures.net import RedisServer
from tests.polling import eventually
from tests.storage.conftest import MakeOps


class Watch:
    """A running ``RulesStore.watch`` whose callback puts each version on a queue."""

    def __init__(self, store: RulesStore, *, known_version: int | None = None) -> None:
        self.versions: asyncio.Queue[int] = asyncio.Queue()
        self.fail_next = 0
        self.task = asyncio.create_task(store.watch(self._seen, known_version=known_version))

    async def _seen(self, version: int) -> None:
        if self.fail_next:
            self.fail_next -= 1
            raise RuntimeError("callback failed")
        self.versions.put_nowait(version)

    async def next(self, timeout_s: float = 1.0) -> int:
        return await asyncio.wait_for(self.versions.get(), timeout_s)

    async def stop(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


@contextlib.asynccontextmanager
async def watching(store: RulesStore, **kwargs: int | None) -> AsyncIterator[Watch]:
    watch = Watch(store, **kwargs)
    try:
        yield watch
    finally:
        await watch.stop()


async def test_push_pull_version(ops: RedisOps) -> None:
    """Each push returns the next version; pull returns the latest text with its version."""
    store = RulesStore(ops)
    assert await store.pull() is None
    assert await store.version() is None
    assert await store.push("version: 1 # a\n", source="a.yaml") == 1
    assert await store.push("version: 1 # b\n") == 2
    assert await store.version() == 2
    assert await store.pull() == (2, "version: 1 # b\n", None, "")
    assert await ops.client.hget(store.key, "source") == ""


async def test_watcher_hears_of_a_push_within_a_second(make_ops: MakeOps) -> None:
    """A watcher on another connection is called with the new version within 1 s of a push."""
    pusher, follower = RulesStore(make_ops()), RulesStore(make_ops(), poll_interval_s=60)
    await pusher.push("one")
    async with watching(follower) as watch:
        assert await watch.next(2.0) == 1  # the version present when it subscribed
        started = time.monotonic()
        await pusher.push("two")
        assert await watch.next(1.0) == 2
        print(f"watcher notified {(time.monotonic() - started) * 1000:.1f} ms after the push")
        assert watch.versions.empty()


async def test_watcher_skips_the_version_it_already_has(ops: RedisOps) -> None:
    """known_version is not reported again; the next push is."""
    store = RulesStore(ops, poll_interval_s=0.05)
    await store.push("one")
    async with watching(store, known_version=1) as watch:
        with pytest.raises(TimeoutError):
            await watch.next(0.3)
        await store.push("two")
        assert await watch.next() == 2


async def test_watcher_polls_when_a_message_is_lost(ops: RedisOps) -> None:
    """A version written without its pub/sub message is still found by the periodic poll."""
    store = RulesStore(ops, poll_interval_s=0.1)
    await store.push("one")
    async with watching(store) as watch:
        assert await watch.next() == 1
        await ops.client.hincrby(store.key, "version", 1)  # no PUBLISH
        assert await watch.next() == 2


async def test_watcher_retries_a_failed_callback(ops: RedisOps) -> None:
    """If the callback raises, the same version is offered again at the next poll."""
    store = RulesStore(ops, poll_interval_s=0.05)
    await store.push("one")
    async with watching(store) as watch:
        watch.fail_next = 1
        assert await watch.next() == 1


async def test_watcher_survives_a_redis_restart(
    make_ops: MakeOps, redis_server: RedisServer
) -> None:
    """After Redis restarts (empty) on the same port, the watcher still sees the next push."""
    pusher = RulesStore(make_ops(url=redis_server.url))
    follower = RulesStore(make_ops(url=redis_server.url), poll_interval_s=60)
    await pusher.push("one")
    async with watching(follower) as watch:
        assert await watch.next(2.0) == 1
        redis_server.stop()
        redis_server.start()

        # Redis lost its data: this push is version 1 again, yet new to the watcher.
        async def pushed() -> int | None:
            with contextlib.suppress(Exception):
                return await pusher.push("after restart")
            return None

        version = await eventually(
            pushed, "a push once Redis is back", timeout_s=5, interval_s=0.05
        )
        assert version == 1
        assert await watch.next(6.0) == 1
    assert await follower.pull() == (1, "after restart", None, "")
