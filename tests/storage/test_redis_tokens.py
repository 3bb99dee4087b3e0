"""Token set CAS, the cross-replica refresh lock, and single-use OAuth states in Redis."""

from __future__ import annotations

import asyncio
import time

import pytest

from router.errors import StorageError
from router.mtt.tokens import TokenSet
from router.state.redis_conn import RedisOps
from router.state.redis_tokens import RedisOAuthStateStore, RedisTokenStore
from tests.fixtures.net import RedisServer
from tests.polling import eventually
from tests.storage.conftest import MakeOps


def tokens(version: int, access: str = "a") -> TokenSet:
    now = time.time()
    return TokenSet(access, f"r-{access}", now + 7200, now + 3 * 86400, now, version=version)


async def test_load_save_round_trip(ops: RedisOps) -> None:
    """Nothing stored loads as None; a saved set loads back equal."""
    store = RedisTokenStore(ops)
    assert await store.load() is None
    saved = tokens(1)
    assert await store.save(saved, expected_version=None)
    assert await store.load() == saved


async def test_compare_and_set_refuses_an_older_set(make_ops: MakeOps) -> None:
    """A save expecting an outdated version stores nothing; the newer set stays."""
    one, two = RedisTokenStore(make_ops()), RedisTokenStore(make_ops())
    assert await one.save(tokens(1, "first"), expected_version=None)
    assert await one.save(tokens(2, "second"), expected_version=1)
    assert not await two.save(tokens(2, "stale"), expected_version=1)
    loaded = await two.load()
    assert loaded is not None
    assert (loaded.access_token, loaded.version) == ("second", 2)


async def test_compare_and_set_on_an_empty_store_is_refused(ops: RedisOps) -> None:
    """Expecting a version when nothing is stored stores nothing (only a login may)."""
    store = RedisTokenStore(ops)
    assert not await store.save(tokens(1), expected_version=0)
    assert await store.load() is None


async def test_concurrent_refreshes_from_two_replicas_store_once(make_ops: MakeOps) -> None:
    """Two replicas racing to replace version 1 with their own version 2: exactly one wins."""
    one, two = RedisTokenStore(make_ops()), RedisTokenStore(make_ops())
    await one.save(tokens(1), expected_version=None)
    results = await asyncio.gather(
        one.save(tokens(2, "one"), expected_version=1),
        two.save(tokens(2, "two"), expected_version=1),
    )
    assert sorted(results) == [False, True]


async def test_stored_version_always_grows(ops: RedisOps) -> None:
    """An unconditional save of a lower version is stored one above the current version."""
    store = RedisTokenStore(ops)
    await store.save(tokens(5), expected_version=None)
    await store.save(tokens(0, "login"), expected_version=None)
    loaded = await store.load()
    assert loaded is not None
    assert (loaded.access_token, loaded.version) == ("login", 6)


async def test_unreadable_tokens_load_as_none(ops: RedisOps) -> None:
    """A corrupted stored set loads as None (logged), not as an exception."""
    store = RedisTokenStore(ops)
    await ops.client.hset(store.key, mapping={"version": "1", "json": "{not json"})
    assert await store.load() is None


async def test_refresh_lock_excludes_a_second_replica(make_ops: MakeOps) -> None:
    """While one replica holds the refresh lock, another waits, and enters once it is freed."""
    one, two = RedisTokenStore(make_ops()), RedisTokenStore(make_ops())
    second_in = asyncio.Event()

    async def second() -> None:
        async with two.refresh_lock():
            second_in.set()

    async with one.refresh_lock():
        task = asyncio.create_task(second())
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(asyncio.shield(second_in.wait()), 0.3)
    await asyncio.wait_for(second_in.wait(), 2.0)
    await task


async def test_refresh_lock_excludes_coroutines_of_one_replica(ops: RedisOps) -> None:
    """Concurrent holders in one process never overlap."""
    store = RedisTokenStore(ops)
    inside = 0
    most = 0

    async def hold() -> None:
        nonlocal inside, most
        async with store.refresh_lock():
            inside += 1
            most = max(most, inside)
            await asyncio.sleep(0.01)
            inside -= 1

    await asyncio.gather(*(hold() for _ in range(5)))
    assert most == 1


async def test_refresh_lock_wait_is_bounded(make_ops: MakeOps) -> None:
    """A replica waiting longer than lock_wait_s for the lock gets StorageError."""
    one = RedisTokenStore(make_ops())
    two = RedisTokenStore(make_ops(), lock_wait_s=0.2)
    async with one.refresh_lock():
        started = time.monotonic()
        with pytest.raises(StorageError, match="another replica"):
            async with two.refresh_lock():
                pytest.fail("entered a held lock")
        assert 0.2 <= time.monotonic() - started < 1.0


async def test_refresh_lock_frees_itself_when_the_holder_dies(make_ops: MakeOps) -> None:
    """A lock never released (its holder crashed) expires after lock_ttl_s."""
    dead = RedisTokenStore(make_ops(), lock_ttl_s=0.2)
    alive = RedisTokenStore(make_ops(), lock_wait_s=2.0)
    held = dead.refresh_lock()
    await held.__aenter__()  # and never __aexit__: the holder "crashed"
    started = time.monotonic()
    async with alive.refresh_lock():
        waited = time.monotonic() - started
    assert 0.1 <= waited < 1.5
    # The dead holder's late release does not free someone else's lock, and does not raise.
    await held.__aexit__(None, None, None)


async def test_refresh_lock_fails_fast_without_redis(
    outage_ops: RedisOps, redis_server: RedisServer
) -> None:
    """With Redis stopped the lock raises StorageError at once instead of waiting."""
    store = RedisTokenStore(outage_ops)
    redis_server.stop()
    started = time.monotonic()
    with pytest.raises(StorageError):
        async with store.refresh_lock():
            pytest.fail("entered without Redis")
    assert time.monotonic() - started < 0.5


async def test_oauth_state_is_single_use_across_replicas(make_ops: MakeOps) -> None:
    """A state put by one replica is redeemed once, by whichever replica gets the callback."""
    one, two = RedisOAuthStateStore(make_ops()), RedisOAuthStateStore(make_ops())
    await one.put("s1", 60)
    assert await two.redeem("s1")
    assert not await one.redeem("s1")
    assert not await two.redeem("never-issued")


async def test_oauth_state_expires(ops: RedisOps) -> None:
    """A state not redeemed within its TTL is gone (the key carries a PX expiry)."""
    store = RedisOAuthStateStore(ops)
    await store.put("s2", 60)
    assert 0 < await ops.client.pttl("test:oauth:state:s2") <= 60_000
    await store.put("s3", 0.05)
    key = "test:oauth:state:s3"
    assert await ops.client.exists(key)

    async def gone() -> bool:
        return not await ops.client.exists(key)

    await eventually(gone, "the state key expired", timeout_s=2.0)
    assert not await store.redeem("s3")


async def test_oauth_state_rejects_silly_values(ops: RedisOps) -> None:
    """Empty or oversized states are never stored nor redeemed."""
    store = RedisOAuthStateStore(ops)
    with pytest.raises(ValueError, match="OAuth state"):
        await store.put("", 60)
    assert not await store.redeem("x" * 10_000)
