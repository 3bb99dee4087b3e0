"""In-process stores: the 0600 atomic tokens file, OAuth states, call claims, presence."""

from __future__ import annotations

import asyncio
import json
import os
import stat
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from router.context import Read
from router.mtt.tokens import TokenSet
from router.state.memory import (
    FileTokenStore,
    MemoryCallStore,
    MemoryOAuthStates,
    MemoryPresence,
    MemoryTokenStore,
)
from router.state.presence_view import PresenceView


def token_set(version: int = 1, access: str = "ACCESS-SECRET") -> TokenSet:
    """A token set with recognisable (fake) secrets."""
    return TokenSet(
        access_token=access,
        refresh_token="REFRESH-SECRET",
        access_expires_at=2_000_000_000.0,
        refresh_expires_at=2_000_100_000.0,
        obtained_at=1_999_990_000.0,
        scope="https://mtt.ru/auth.tokens.readwrite",
        version=version,
    )


class Clock:
    """A clock tests move by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


# -- FileTokenStore -------------------------------------------------------------------------------


async def test_file_round_trip_and_mode_0600(tmp_path: Path) -> None:
    """A saved set loads back equal; the file is 0600 even under a permissive umask."""
    path = tmp_path / "tokens.json"
    old_umask = os.umask(0)
    try:
        assert await FileTokenStore(path).save(token_set(), expected_version=None)
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert await FileTokenStore(path).load() == token_set()


async def test_tokens_file_is_created_0600_not_chmodded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The temp file is created with mode 0600 by open(2) itself: no readable moment."""
    real_open = os.open
    created: list[tuple[str, int, int]] = []

    def spy(path: str | os.PathLike[str], flags: int, mode: int = 0o777, **kw: object) -> int:
        if flags & os.O_CREAT:
            created.append((os.fspath(path), flags, mode))
        return real_open(path, flags, mode, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "open", spy)
    await FileTokenStore(tmp_path / "tokens.json").save(token_set(), expected_version=None)
    [(path, flags, mode)] = created
    assert Path(path).parent == tmp_path
    assert flags & os.O_EXCL
    assert mode == 0o600


async def test_missing_file_loads_none(tmp_path: Path) -> None:
    """No file yet means never authorised, silently."""
    with capture_logs() as logs:
        assert await FileTokenStore(tmp_path / "nope.json").load() is None
    assert logs == []


async def test_save_replaces_atomically(tmp_path: Path) -> None:
    """A save writes a new file and renames it over the old one; no temp file is left."""
    path = tmp_path / "tokens.json"
    store = FileTokenStore(path)
    await store.save(token_set(1), expected_version=None)
    inode = path.stat().st_ino
    await store.save(token_set(2), expected_version=1)
    assert path.stat().st_ino != inode  # a different file was renamed into place
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(os.listdir(tmp_path)) == ["tokens.json"]
    assert json.loads(path.read_text())["version"] == 2


async def test_save_is_compare_and_set(tmp_path: Path) -> None:
    """A save expecting an older version stores nothing and says so."""
    store = FileTokenStore(tmp_path / "tokens.json")
    assert not await store.save(token_set(1), expected_version=0)  # nothing stored yet
    await store.save(token_set(3), expected_version=None)
    assert not await store.save(token_set(4), expected_version=2)
    assert await store.save(token_set(4), expected_version=3)
    loaded = await store.load()
    assert loaded is not None
    assert loaded.version == 4


async def test_temp_file_removed_when_write_fails(tmp_path: Path) -> None:
    """A failed write leaves the old file untouched and no temp file behind."""
    path = tmp_path / "tokens.json"
    store = FileTokenStore(path)
    await store.save(token_set(1), expected_version=None)
    path.unlink()
    path.mkdir()  # os.replace of a file over a directory fails
    with pytest.raises(OSError):  # noqa: PT011 - the errno differs between kernels
        await store.save(token_set(2), expected_version=None)
    assert sorted(os.listdir(tmp_path)) == ["tokens.json"]


@pytest.mark.parametrize(
    "content",
    [b"{not json", b"[1, 2]", b'{"access_token": "ACCESS-SECRET"}'],
    ids=["garbage", "not-object", "incomplete"],
)
async def test_corrupt_file_loads_none_with_one_clear_line(tmp_path: Path, content: bytes) -> None:
    """A broken tokens file is reported in one line that does not quote it."""
    path = tmp_path / "tokens.json"
    path.write_bytes(content)
    with capture_logs() as logs:
        assert await FileTokenStore(path).load() is None
    [line] = logs
    assert line["event"] == "tokens_file_unreadable"
    assert line["log_level"] == "error"
    assert "ACCESS-SECRET" not in repr(line)


async def test_unreadable_file_is_replaced_only_unconditionally(tmp_path: Path) -> None:
    """A corrupt file blocks compare-and-set saves but not a fresh login."""
    path = tmp_path / "tokens.json"
    path.write_text("garbage")
    store = FileTokenStore(path)
    assert not await store.save(token_set(1), expected_version=0)
    assert await store.save(token_set(1), expected_version=None)


async def test_refresh_lock_excludes_another_process(tmp_path: Path) -> None:
    """Two stores on one file (daemon and CLI) never hold the refresh lock at once."""
    path = tmp_path / "tokens.json"
    first, second = FileTokenStore(path), FileTokenStore(path)
    order: list[str] = []
    entered = asyncio.Event()
    release = asyncio.Event()

    async def holder() -> None:
        async with first.refresh_lock():
            order.append("first in")
            entered.set()
            await release.wait()
            order.append("first out")

    async def waiter() -> None:
        await entered.wait()
        async with second.refresh_lock():
            order.append("second in")

    tasks = [asyncio.create_task(holder()), asyncio.create_task(waiter())]
    await entered.wait()
    await asyncio.sleep(0.15)  # the waiter polls the flock meanwhile; it must not get in
    assert order == ["first in"]
    release.set()
    await asyncio.gather(*tasks)
    assert order == ["first in", "first out", "second in"]
    assert stat.S_IMODE((tmp_path / "tokens.json.lock").stat().st_mode) == 0o600


def test_store_reprs_hide_tokens(tmp_path: Path) -> None:
    """No store and no token set prints a token."""
    text = repr(FileTokenStore(tmp_path / "t.json")) + repr(MemoryTokenStore(token_set()))
    text += repr(token_set())
    assert "SECRET" not in text


async def test_memory_token_store_is_compare_and_set() -> None:
    """MemoryTokenStore honours expected_version like the file store."""
    store = MemoryTokenStore()
    assert await store.save(token_set(1), expected_version=None)
    assert not await store.save(token_set(2), expected_version=0)
    assert await store.save(token_set(2), expected_version=1)
    assert (await store.load()) == token_set(2)
    async with store.refresh_lock():
        assert store.saves == 2


# -- OAuth states --------------------------------------------------------------------------------


async def test_state_redeems_once_before_expiry() -> None:
    """A state is good once and only within its TTL."""
    clock = Clock()
    states = MemoryOAuthStates(clock=clock)
    await states.put("a", 600)
    await states.put("b", 600)
    assert await states.redeem("a")
    assert not await states.redeem("a")
    assert not await states.redeem("never")
    clock.now += 600
    assert not await states.redeem("b")


async def test_states_are_bounded() -> None:
    """Flooding /oauth/start cannot grow the state table without bound."""
    clock = Clock()
    states = MemoryOAuthStates(clock=clock, max_states=3)
    for name in "abcd":
        await states.put(name, 600)
    assert not await states.redeem("a")  # the oldest made room
    assert await states.redeem("d")
    clock.now += 601
    await states.put("e", 600)  # expired ones are dropped on the way
    assert len(states._expires) == 1


# -- call claims -------------------------------------------------------------------------------


def test_first_claim_wins_until_expiry() -> None:
    """Only the first claimant of a call id gets True while the claim lives."""
    clock = Clock()
    claims = MemoryCallStore(clock=clock)
    assert claims.claim("c1", 30)
    assert not claims.claim("c1", 30)
    assert claims.claim("c2", 30)
    clock.now += 30
    assert claims.claim("c1", 30)


def test_claims_are_pruned() -> None:
    """Expired claims leave on the next claim, so the table stays bounded by time."""
    clock = Clock()
    claims = MemoryCallStore(clock=clock)
    for i in range(1000):
        claims.claim(f"call-{i}", 10)
    assert len(claims) == 1000
    clock.now += 5
    claims.claim("middle", 10)
    assert len(claims) == 1001
    clock.now += 6  # the first thousand expired, "middle" has not
    claims.claim("late", 10)
    assert len(claims) == 2
    assert not claims.claim("middle", 10)


def test_claims_are_bounded_by_count_oldest_out() -> None:
    """Past max_claims the oldest claim leaves first; the newest ones still deduplicate."""
    claims = MemoryCallStore(clock=Clock(), max_claims=100)
    for i in range(250):
        assert claims.claim(f"forged-{i}", 30)
    assert claims.bound() == (100, 100)
    assert not claims.claim("forged-249", 30)  # recent: still claimed
    assert claims.claim("forged-0", 30)  # pushed out by the flood: claimable again
    assert len(claims) == 100


async def test_claim_and_read_answers_every_read_with_nothing_stored() -> None:
    """Memory storage keeps no client map: each read is answered None, the claim still counts."""
    calls = MemoryCallStore(clock=Clock())
    read = Read("clients", "79219462761")
    first = await calls.claim_and_read("c1", 30, [read])
    again = await calls.claim_and_read("c1", 30, [read])
    assert (first.claimed, dict(first.values)) == (True, {read: None})
    assert again.claimed is False


# -- presence ---------------------------------------------------------------------------------


async def test_presence_busy_and_free() -> None:
    """A workplace is busy while on any call and free when its last call ends."""
    presence = MemoryPresence(clock=Clock())
    await presence.set_busy("w1", "c1", 3600)
    await presence.set_busy("w1", "c2", 3600)
    await presence.set_busy("w2", "c3", 3600)
    assert presence.busy() == {"w1", "w2"}
    await presence.set_free("w1", "c1")
    assert presence.busy() == {"w1", "w2"}
    await presence.set_free("w1", "c2")
    await presence.set_free("w9", "unknown")
    assert presence.busy() == {"w2"}


async def test_presence_snapshot_is_cached_until_changed() -> None:
    """busy() returns the very same frozenset until something changes."""
    presence = MemoryPresence(clock=Clock())
    await presence.set_busy("w1", "c1", 3600)
    first = presence.busy()
    assert presence.busy() is first
    await presence.set_busy("w2", "c2", 3600)
    assert presence.busy() is not first


async def test_presence_snapshot_is_kept_when_a_busy_workplace_takes_another_call() -> None:
    """Only a workplace becoming busy or free makes a new snapshot: no rebuild per call."""
    presence = MemoryPresence(clock=Clock())
    await presence.set_busy("w1", "c1", 3600)
    first = presence.busy()
    await presence.set_busy("w1", "c2", 3600)
    await presence.set_free("w1", "c1")
    assert presence.busy() is first
    await presence.set_free("w1", "c2")
    assert presence.busy() == frozenset()


async def test_presence_calls_per_workplace_are_bounded_oldest_out() -> None:
    """Forged connected notifications for one workplace cannot grow it past its limit."""
    view = PresenceView(Clock(), max_calls_per_workplace=4)
    for i in range(1000):
        view.set("w1", f"forged-{i}", 1000.0)
    assert view.calls("w1") == ("forged-996", "forged-997", "forged-998", "forged-999")
    assert view.bound().size == 4
    for i in range(996, 1000):
        view.set("w1", f"forged-{i}", None)
    assert view.busy() == frozenset()
    assert len(view) == 0


async def test_presence_workplaces_are_bounded_least_recent_out() -> None:
    """Past max_workplaces the workplace changed longest ago leaves first."""
    view = PresenceView(Clock(), max_workplaces=3)
    for workplace in ("w1", "w2", "w3"):
        view.set(workplace, "c", 1000.0)
    view.set("w1", "c2", 1000.0)  # w1 is now the most recently changed
    view.set("w4", "c", 1000.0)
    assert view.busy() == {"w1", "w3", "w4"}
    assert view.bound() == (4, 3 * 32)


async def test_presence_expiry_heap_stays_bounded_under_churn() -> None:
    """Re-setting the same calls over and over does not grow the deadline heap without bound."""
    clock = Clock()
    view = PresenceView(clock)
    for round_ in range(2000):
        view.set("w1", f"c{round_ % 3}", clock.now + 100 + round_)
    assert len(view) == 3
    assert len(view._deadlines) <= 512
    clock.now += 10_000
    assert view.busy() == frozenset()
    assert len(view) == 0


async def test_presence_replace_applies_the_bounds() -> None:
    """A snapshot (from Redis) replaces the view, limits included."""
    clock = Clock()
    view = PresenceView(clock, max_calls_per_workplace=2)
    view.set("old", "c", 1000.0)
    view.replace([("w1", "a", 150.0), ("w1", "b", 160.0), ("w1", "c", 170.0), ("w2", "d", 0.0)])
    assert view.busy() == {"w1"}
    assert view.calls("w1") == ("b", "c")
    clock.now = 165
    assert view.calls("w1") == ("c",)


async def test_presence_ttl_is_a_safety_net() -> None:
    """A call whose finished notification never came stops counting after its TTL."""
    clock = Clock()
    presence = MemoryPresence(clock=clock)
    await presence.set_busy("w1", "c1", 10)
    await presence.set_busy("w2", "c2", 100)
    assert presence.busy() == {"w1", "w2"}
    clock.now += 10
    assert presence.busy() == {"w2"}
    clock.now += 90
    assert presence.busy() == frozenset()
