"""The client map: lookups with a cache invalidated across replicas, edits, and CSV imports."""

from __future__ import annotations

import asyncio
import csv
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from router.errors import StorageError
from router.numbers import NumberError, normalize
from router.state.clients_csv import fast_normalize
from router.state.redis_clients import ClientMap
from router.state.redis_conn import RedisOps
from tests.fixtures.net import RedisServer
from tests.polling import eventually
from tests.storage.conftest import MakeOps, errors


@pytest.fixture
async def two_maps(make_ops: MakeOps) -> AsyncIterator[tuple[ClientMap, ClientMap]]:
    """Two client maps on separate connections (two replicas), both following changes."""
    maps = ClientMap(make_ops()), ClientMap(make_ops())
    for client_map in maps:
        client_map.start()
    try:
        for client_map in maps:
            await asyncio.wait_for(client_map.subscriber.subscribed.wait(), 2)
        yield maps
    finally:
        for client_map in maps:
            await client_map.aclose()


async def test_set_get_delete_count(ops: RedisOps) -> None:
    """A number set in any spelling is found in any other; delete says whether it existed."""
    clients = ClientMap(ops)
    assert await clients.set("+7 (921) 946-27-61", "ivanov") == "79219462761"
    assert await clients.get("89219462761") == "ivanov"
    assert await clients.get("79219462761@pstn") == "ivanov"
    assert await clients.get("79990000000") is None
    assert await clients.get("anonymous") is None
    assert await clients.count() == 1
    assert await clients.delete("8 921 946 27 61")
    assert not await clients.delete("8 921 946 27 61")
    assert await clients.get("79219462761") is None
    assert await clients.count() == 0


async def test_bad_input_is_refused(ops: RedisOps) -> None:
    """A bad number or manager id raises ValueError and stores nothing."""
    clients = ClientMap(ops)
    with pytest.raises(NumberError):
        await clients.set("not a number", "ivanov")
    with pytest.raises(ValueError, match="manager id"):
        await clients.set("79219462761", "two words")
    assert await clients.count() == 0


async def test_a_change_reaches_the_other_replicas_cache_within_a_second(
    two_maps: tuple[ClientMap, ClientMap],
) -> None:
    """Replica B caches a miss; A sets the number; B answers the new manager within 1 s."""
    a, b = two_maps
    number = "79219462761"
    assert await b.get(number) is None
    assert number in b._cache  # cached as a miss
    await a.set(number, "ivanov")
    started = time.monotonic()
    await eventually(manager_is(b, number, "ivanov"), "B answers ivanov", timeout_s=1.0)
    elapsed_s = time.monotonic() - started
    print(f"other replica saw the change after {elapsed_s * 1000:.1f} ms")
    await a.delete(number)
    await eventually(manager_is(b, number, None), "B forgets it", timeout_s=1.0)


def manager_is(
    client_map: ClientMap, number: str, manager: str | None
) -> Callable[[], Awaitable[bool]]:
    """A check for :func:`eventually`: ``client_map`` answers ``manager`` for ``number``."""

    async def check() -> bool:
        return await client_map.get(number) == manager

    return check


async def test_the_cache_answers_without_redis_while_subscribed(
    two_maps: tuple[ClientMap, ClientMap], make_ops: MakeOps
) -> None:
    """A cached answer is served from memory: a write that skips the channel goes unseen."""
    a, _ = two_maps
    await a.set("79219462761", "ivanov")
    assert await a.get("79219462761") == "ivanov"
    raw = make_ops()
    await raw.client.hset(a.key, "79219462761", "petrova")  # no invalidation message
    assert await a.get("79219462761") == "ivanov"


async def test_without_a_subscription_nothing_is_cached(ops: RedisOps, make_ops: MakeOps) -> None:
    """A map that does not follow changes (the CLI) reads Redis every time."""
    clients = ClientMap(ops)
    await clients.set("79219462761", "ivanov")
    assert await clients.get("79219462761") == "ivanov"
    await make_ops().client.hset(clients.key, "79219462761", "petrova")
    assert await clients.get("79219462761") == "petrova"


async def test_cache_is_bounded(two_maps: tuple[ClientMap, ClientMap]) -> None:
    """The LRU never holds more than cache_size entries."""
    a, _ = two_maps
    a.cache_size = 10
    for i in range(30):
        await a.get(f"7921000{i:04d}")
    assert len(a._cache) == 10


async def test_stale_cache_serves_while_redis_is_down(
    make_ops: MakeOps, redis_server: RedisServer
) -> None:
    """Redis stopped: a cached number still answers; an uncached one raises StorageError."""
    clients = ClientMap(make_ops(url=redis_server.url))
    clients.start()
    try:
        await asyncio.wait_for(clients.subscriber.subscribed.wait(), 2)
        await clients.set("79219462761", "ivanov")
        assert await clients.get("79219462761") == "ivanov"
        redis_server.stop()
        await eventually(
            lambda: not clients.subscriber.subscribed.is_set(),
            "the subscriber notices Redis is gone",
            timeout_s=2.0,
        )
        assert await clients.get("79219462761") == "ivanov"
        started = time.monotonic()
        with pytest.raises(StorageError):
            await clients.get("79990000000")
        assert time.monotonic() - started < 0.5
        assert errors(clients._ops, "clients.get") == 2
    finally:
        await clients.aclose()


def write_csv(path: Path, rows: list[str]) -> Path:
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


async def test_import_reports_bad_rows_by_line(ops: RedisOps, tmp_path: Path) -> None:
    """Good rows are imported; bad ones are reported with their line number and skipped."""
    path = write_csv(
        tmp_path / "clients.csv",
        [
            "number;manager",  # 1: header
            "+7 921 946-27-61;ivanov",  # 2
            "",  # 3: blank
            "# a comment;x",  # 4
            "not-a-number;ivanov",  # 5
            "79990000001;ghost",  # 6: unknown manager
            "79990000002;ivanov;extra",  # 7
            "8 (999) 000-00-03;petrova",  # 8
            "79990000004;two words",  # 9
        ],
    )
    clients = ClientMap(ops)
    result = await clients.import_csv(path, managers={"ivanov", "petrova"})
    assert (result.imported, result.added, result.bad_rows) == (2, 2, 4)
    assert [line for line, _ in result.problems] == [5, 6, 7, 9]
    assert "ghost" in result.problems[1][1]
    assert await clients.get("79219462761") == "ivanov"
    assert await clients.get("79990000003") == "petrova"
    assert await clients.count() == 2


async def test_import_rows_in_batches_reaches_other_replicas(
    two_maps: tuple[ClientMap, ClientMap],
) -> None:
    """Rows given as an iterable are written in batches; other replicas drop their caches."""
    a, b = two_maps
    a.batch_size = 7
    assert await b.get("79990000005") is None  # a cached miss
    rows = [(f"7999000{i:04d}", "ivanov") for i in range(50)]
    result = await a.import_csv(rows)
    assert (result.imported, result.added, result.bad_rows) == (50, 50, 0)
    assert await a.count() == 50
    await eventually(manager_is(b, "79990000005", "ivanov"), "B sees the import", timeout_s=1.0)


async def test_import_replace_swaps_the_whole_map(ops: RedisOps) -> None:
    """--replace leaves only the imported rows, and no temporary key behind."""
    clients = ClientMap(ops)
    await clients.set("79990000001", "old")
    result = await clients.import_csv([("79990000002", "new")], replace=True)
    assert result.replaced
    assert await clients.get("79990000001") is None
    assert await clients.get("79990000002") == "new"
    assert await ops.client.keys("test:clients:import:*") == []
    assert await ops.client.ttl(clients.key) == -1  # business data: never expires


async def test_import_replace_with_bad_rows_changes_nothing(ops: RedisOps) -> None:
    """--replace with any bad row keeps the old map as it was."""
    clients = ClientMap(ops)
    await clients.set("79990000001", "old")
    result = await clients.import_csv([("79990000002", "new"), ("bad", "new")], replace=True)
    assert not result.replaced
    assert (result.imported, result.bad_rows) == (0, 1)
    assert await clients.get("79990000001") == "old"
    assert await clients.get("79990000002") is None
    assert await ops.client.keys("test:clients:import:*") == []


async def test_import_of_a_tab_separated_file_with_a_bom(ops: RedisOps, tmp_path: Path) -> None:
    """Tab-separated files and a UTF-8 BOM (Excel) are read like comma-separated ones."""
    path = tmp_path / "tab.csv"
    path.write_text("\ufeffphone\tmanager\n79990000001\tivanov\n", encoding="utf-8")
    result = await ClientMap(ops).import_csv(path)
    assert (result.imported, result.bad_rows) == (1, 0)


@given(
    digits=st.text(alphabet="0123456789", min_size=10, max_size=10),
    spaced=st.booleans(),
)
def test_fast_normalize_agrees_with_normalize_on_plus7(digits: str, spaced: bool) -> None:
    """The import's shortcut for +7 numbers gives exactly what router.numbers.normalize gives."""
    raw = f"+7 ({digits[:3]}) {digits[3:6]}-{digits[6:8]}-{digits[8:]}" if spaced else f"+7{digits}"
    assert fast_normalize(raw) == normalize(raw)


@given(st.text(alphabet="0123456789", min_size=1, max_size=16))
def test_fast_normalize_agrees_with_normalize_on_digits(raw: str) -> None:
    """The shortcut for plain digits (8..., 9..., 7..., short numbers) matches normalize."""
    try:
        expected = normalize(raw)
    except NumberError:
        with pytest.raises(NumberError):
            fast_normalize(raw)
        return
    assert fast_normalize(raw) == expected


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_import_of_a_million_rows(make_ops: MakeOps, tmp_path: Path) -> None:
    """A 1,000,000-row CSV (mixed spellings) imports in well under a minute, every row present."""
    path = tmp_path / "million.csv"
    spellings = ("+7 (9{0:02d}) {1:03d}-{2:02d}-{3:02d}", "8{4}", "7{4}", "+7{4}")
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(("number", "manager"))
        for i in range(1_000_000):
            national = f"9{i:09d}"
            n = int(national)
            raw = spellings[i % 4].format(
                (n // 10**7) % 100, (n // 10**4) % 1000, (n // 100) % 100, n % 100, national
            )
            writer.writerow((raw, f"m{i % 50}"))
    clients = ClientMap(make_ops(role="cli"))
    started = time.monotonic()
    result = await clients.import_csv(path)
    elapsed = time.monotonic() - started
    print(f"\n1,000,000-row import: {elapsed:.1f} s ({1_000_000 / elapsed:,.0f} rows/s)")
    assert (result.imported, result.added, result.bad_rows) == (1_000_000, 1_000_000, 0)
    assert await clients.count() == 1_000_000
    assert await clients.get("79000000000") == "m0"
    assert await clients.get("8 900 099-99-99") == "m49"
