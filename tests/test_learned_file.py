"""The learned map of memory storage (router/state/learned_file.py): answered with no I/O,
bounded, written debounced to a 0600 file beside the tokens, and following other processes'
edits of that file (``mtt-router clients forget``)."""

from __future__ import annotations

import json
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from router.context import Read
from router.sources import LEARNED_SPACE
from router.state.learned_file import LearnedFile, learned_path
from router.state.memory import MemoryCallStore
from tests.polling import eventually

DAY_S = 86_400.0


class WallClock:
    def __init__(self) -> None:
        self.now = 1_900_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def daemon_map(tmp_path: Path) -> AsyncIterator[LearnedFile]:
    """The daemon's map: background writer on, written within 50 ms, file polled every 20 ms."""
    learned = LearnedFile(learned_path(tmp_path / "tokens.json"), flush_s=0.05, poll_s=0.02)
    learned.load()
    learned.start()
    yield learned
    await learned.aclose()


def on_disk(path: Path) -> dict[str, str]:
    """number -> manager as the file holds them (nothing when there is no file)."""
    if not path.exists():
        return {}
    data = json.loads(path.read_text(encoding="utf-8"))
    return {row[0]: row[1] for row in data["entries"]}


def temp_files(directory: Path) -> list[str]:
    """Temp files a write left behind."""
    return [p.name for p in directory.iterdir() if p.name.endswith(".tmp")]


def test_the_file_sits_beside_the_tokens_file(tmp_path: Path) -> None:
    assert learned_path(tmp_path / "tokens.json") == tmp_path / "tokens.json.learned.json"


async def test_the_call_store_answers_learned_reads_from_memory(tmp_path: Path) -> None:
    """claim_and_read answers the learned read from the map (no I/O), other spaces None."""
    learned = LearnedFile(tmp_path / "l.json")
    learned.remember("79990001122", "sidorov", DAY_S)
    calls = MemoryCallStore(spaces={LEARNED_SPACE: learned})
    reads = (Read(LEARNED_SPACE, "79990001122"), Read(LEARNED_SPACE, "7000"), Read("clients", "1"))
    gathered = await calls.claim_and_read("call-1", 60.0, reads)
    assert gathered.claimed
    assert dict(gathered.values) == dict(zip(reads, ("sidorov", None, None), strict=True))
    assert not (tmp_path / "l.json").exists()  # nothing written without the background task


async def test_entries_expire_and_a_new_lesson_replaces_the_old(tmp_path: Path) -> None:
    clock = WallClock()
    learned = LearnedFile(tmp_path / "l.json", clock=clock)
    learned.remember("7001", "sidorov", 10.0)
    learned.remember("7001", "petrova", 10.0)
    clock.now += 5.0
    assert learned.lookup("7001") == "petrova"
    entry = await learned.get("7001")
    assert entry is not None
    assert (entry.manager, entry.expires_at - entry.learned_at) == ("petrova", 10.0)
    clock.now += 5.0
    assert (learned.lookup("7001"), await learned.get("7001")) == (None, None)


def test_the_map_is_bounded_oldest_lesson_out_first(tmp_path: Path) -> None:
    learned = LearnedFile(tmp_path / "l.json", max_entries=3)
    for i in range(5):
        learned.remember(f"700{i}", "sidorov", DAY_S)
    learned.remember("7002", "petrova", DAY_S)  # learned again: now the newest
    learned.remember("7009", "ivanov", DAY_S)
    assert learned.bound() == (3, 3)
    assert [learned.lookup(f"700{i}") for i in (2, 3, 4, 9)] == [
        "petrova",
        None,
        "sidorov",
        "ivanov",
    ]


async def test_lessons_are_written_debounced_to_a_0600_file_and_read_back(
    daemon_map: LearnedFile, tmp_path: Path
) -> None:
    """One write for a burst of lessons; a new process (restart) reads them back."""
    daemon_map.remember("7001", "sidorov", DAY_S)
    daemon_map.remember("7002", "petrova", DAY_S)
    path = daemon_map.path
    await eventually(lambda: on_disk(path) == {"7001": "sidorov", "7002": "petrova"}, "written")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    restarted = LearnedFile(path)
    restarted.load()
    assert (restarted.lookup("7001"), restarted.lookup("7002")) == ("sidorov", "petrova")
    assert temp_files(tmp_path) == []


async def test_aclose_writes_what_is_left(tmp_path: Path) -> None:
    """Stopping the daemon writes lessons the debounce had not written yet."""
    learned = LearnedFile(tmp_path / "l.json", flush_s=3600.0, poll_s=3600.0)
    learned.start()
    learned.remember("7001", "sidorov", DAY_S)
    assert on_disk(learned.path) == {}
    await learned.aclose()
    assert on_disk(learned.path) == {"7001": "sidorov"}


async def test_a_forget_by_another_process_reaches_the_daemon(daemon_map: LearnedFile) -> None:
    """`clients forget` (another LearnedFile on the same file) drops the entry in the running
    daemon's map; a lesson the daemon learned meanwhile and had not written survives."""
    daemon_map.remember("7001", "sidorov", DAY_S)
    await eventually(lambda: "7001" in on_disk(daemon_map.path), "written")
    daemon_map.remember("7002", "petrova", DAY_S)  # not yet written when the command runs
    command = LearnedFile(daemon_map.path)
    command.load()
    assert await command.forget("7001")
    assert not await command.forget("7001")
    await eventually(lambda: daemon_map.lookup("7001") is None, "the daemon follows the file")
    assert daemon_map.lookup("7002") == "petrova"
    await eventually(lambda: on_disk(daemon_map.path) == {"7002": "petrova"}, "merged and written")


async def test_a_broken_file_is_replaced_not_trusted(tmp_path: Path) -> None:
    """Garbage in the file: nothing from it is used, and the next write replaces it."""
    path = tmp_path / "l.json"
    path.write_text("{not json", encoding="utf-8")
    learned = LearnedFile(path)
    learned.load()
    assert len(learned) == 0
    learned.remember("7001", "sidorov", DAY_S)
    await learned.flush()
    assert on_disk(path) == {"7001": "sidorov"}


async def test_expired_and_malformed_rows_are_skipped_on_load(tmp_path: Path) -> None:
    clock = WallClock()
    path = tmp_path / "l.json"
    rows = [
        ["7001", "sidorov", clock.now - 10, clock.now + DAY_S],
        ["7002", "petrova", clock.now - DAY_S, clock.now - 1],  # expired
        ["7003", "has space", clock.now, clock.now + DAY_S],
        ["not-a-number", "ivanov", clock.now, clock.now + DAY_S],
        "junk",
    ]
    path.write_text(json.dumps({"version": 1, "entries": rows}), encoding="utf-8")
    learned = LearnedFile(path, clock=clock)
    learned.load()
    assert [learned.lookup(n) for n in ("7001", "7002", "7003")] == ["sidorov", None, None]
    assert len(learned) == 1
