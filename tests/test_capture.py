"""``log.capture``: every POST to ``P/events`` as received, off the hot path, 0600, rotated.

Through the real daemon (in-process, the simulator posting over HTTP) for what lands in the file,
and on :class:`router.capture.CaptureWriter` alone for a full queue and a failing disk.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import stat
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import structlog

from router.capture import Captured, CaptureWriter, capture_line
from router.config import Config
from router.simulator import SimConfig
from tests.fixtures import daemon as daemon_fixtures
from tests.fixtures.daemon import (
    IVANOV_CLIENT,
    IVANOV_WP,
    NUMBER,
    UNKNOWN_CALLER,
    StartDaemon,
    daemon_sim_config,
    finished,
    routed_to,
)
from tests.polling import eventually, eventually_sync

CaptureSettings = dict[str, Any]


@pytest.fixture
def sim_config() -> SimConfig:
    """The simulator for daemon tests (1 s parking window)."""
    return daemon_sim_config()


@pytest.fixture
def capture_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CaptureSettings:
    """``log.capture*`` for daemons started in this test (edit the dict before starting one)."""
    settings: CaptureSettings = {"capture": str(tmp_path / "capture.jsonl")}
    original = daemon_fixtures.daemon_config

    def with_capture(*args: Any, **kwargs: Any) -> Config:
        config = original(*args, **kwargs)
        return dataclasses.replace(config, log=dataclasses.replace(config.log, **settings))

    monkeypatch.setattr(daemon_fixtures, "daemon_config", with_capture)
    return settings


class Counter:
    """Stands in for ``mtt_router_capture_dropped_total``."""

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1) -> None:
        """Count."""
        self.value += amount


def read_lines(path: Path) -> list[dict[str, Any]]:
    """The capture file's lines, decoded."""
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def mode_of(path: Path) -> int:
    """Permission bits of ``path``."""
    return stat.S_IMODE(path.stat().st_mode)


async def test_capture_has_every_post_as_received(
    start_daemon: StartDaemon, capture_settings: CaptureSettings
) -> None:
    """Calls' notifications and refused bodies (400, 413) are lines with status, peer and time."""
    daemon = await start_daemon()
    calls = [await daemon.sim.place_call(c, NUMBER) for c in (IVANOV_CLIENT, UNKNOWN_CALLER)]
    for call in calls:
        assert await finished(call) == "transferred"
    assert routed_to(calls[0]) == IVANOV_WP
    refused = [
        (b"{not json", 400),
        (b"\xff\xfe not utf-8", 400),
        (b'{"event": 1}', 400),
        (b" " * (1024 * 1024 + 1), 413),
    ]
    for body, status in refused:
        assert (await daemon.post_event(body))[0] == status
    async with daemon.http.get(f"{daemon.callback_url}?code=c&state=unknown") as resp:
        assert resp.status == 400  # the OAuth callback: never captured
    started = time.time()
    await daemon.stop()  # flushes the queue

    path = Path(capture_settings["capture"])
    assert mode_of(path) == 0o600
    lines = read_lines(path)
    sent = [n for call in calls for n in call.notifications]
    accepted = [line for line in lines if line["status"] == 200]
    assert [json.loads(line["body"]) for line in accepted] == [
        json.loads(json.dumps(n.payload)) for n in sorted(sent, key=lambda n: n.sent_at)
    ]
    assert {line["peer"] for line in lines} == {"127.0.0.1"}
    for line in lines:
        assert abs(line["received_at_s"] - started) < 60
        assert abs(_epoch(line["received_at"]) - line["received_at_s"]) < 1e-3
    tail = lines[len(accepted) :]
    assert [line["status"] for line in tail] == [400, 400, 400, 413]
    assert tail[0]["body"] == "{not json"
    assert (tail[1]["body_encoding"], base64.b64decode(tail[1]["body"])) == (
        "base64",
        b"\xff\xfe not utf-8",
    )
    assert tail[2]["body"] == '{"event": 1}'
    assert (tail[3]["body"], tail[3]["size"]) == (None, 1024 * 1024 + 1)


def _epoch(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


async def test_capture_rotates_keeping_n_files_0600(
    start_daemon: StartDaemon, capture_settings: CaptureSettings
) -> None:
    """Past capture_max_mb the file becomes NAME.1, NAME.1 NAME.2...; only capture_keep are kept."""
    capture_settings.update(capture_max_mb=1, capture_keep=2)
    daemon = await start_daemon()
    bodies = [f"{i:02d}".encode() + b"x" * 600_000 for i in range(7)]
    for body in bodies:
        assert (await daemon.post_event(body))[0] == 400
    await daemon.stop()
    path = Path(capture_settings["capture"])
    files = sorted(p.name for p in path.parent.iterdir() if p.name.startswith(path.name))
    assert files == ["capture.jsonl", "capture.jsonl.1", "capture.jsonl.2"]
    kept = [path.with_name(name) for name in reversed(files[1:])] + [path]
    assert [mode_of(p) for p in kept] == [0o600] * 3
    assert all(p.stat().st_size >= 1024 * 1024 for p in kept[:2])
    order = [line["body"][:2] for p in kept for line in read_lines(p)]
    assert order == [f"{i:02d}" for i in range(7 - len(order), 7)]  # the newest, in order
    assert len(order) < 7  # the oldest were deleted


async def test_failing_disk_drops_and_counts_while_serving(
    start_daemon: StartDaemon, capture_settings: CaptureSettings, tmp_path: Path
) -> None:
    """A capture file that cannot be written costs lines (counted), never a call."""
    capture_settings["capture"] = str(tmp_path / "no such dir" / "capture.jsonl")
    daemon = await start_daemon()
    call = await daemon.sim.place_call(IVANOV_CLIENT, NUMBER)
    assert await finished(call) == "transferred"
    assert routed_to(call) == IVANOV_WP
    await eventually(
        lambda: daemon.sample("mtt_router_capture_dropped_total") >= len(call.notifications),
        "every notification counted as dropped",
    )


def test_full_queue_drops_and_counts_instead_of_blocking(tmp_path: Path) -> None:
    """With the writer behind, add() returns at once: the excess dropped, counted, logged once."""
    dropped = Counter()
    writer = CaptureWriter(
        tmp_path / "c.jsonl", max_bytes=10**6, keep=1, dropped=dropped, queue_max_lines=3
    )
    with structlog.testing.capture_logs() as logs:
        started = time.perf_counter()
        for i in range(10):
            writer.add(time.time(), "10.0.0.1", 200, b'{"n": %d}' % i)
        elapsed = time.perf_counter() - started
    assert elapsed < 0.05
    assert (writer.queued, dropped.value) == (3, 7)
    assert [entry["event"] for entry in logs] == ["capture_dropped"]  # one line a second at most
    writer.close()
    assert [line["body"] for line in read_lines(tmp_path / "c.jsonl")] == [
        '{"n": 0}',
        '{"n": 1}',
        '{"n": 2}',
    ]


def test_queue_is_bounded_by_bytes_too(tmp_path: Path) -> None:
    """Large refused bodies cannot fill memory: the queue also has a byte bound."""
    dropped = Counter()
    writer = CaptureWriter(
        tmp_path / "c.jsonl", max_bytes=10**9, keep=1, dropped=dropped, queue_max_bytes=2500
    )
    for _ in range(5):
        writer.add(time.time(), None, 400, b"x" * 1000)
    assert (writer.queued, dropped.value) == (2, 3)
    writer.close()


def test_existing_file_is_narrowed_to_0600_and_appended(tmp_path: Path) -> None:
    """A capture file left with a wider mode is made 0600 when opened; lines are appended."""
    path = tmp_path / "c.jsonl"
    path.write_bytes(capture_line(_item(b"{}")))
    os.chmod(path, 0o644)
    writer = CaptureWriter(path, max_bytes=10**6, keep=1, dropped=Counter())
    writer.start()
    writer.add(time.time(), "10.0.0.1", 200, b"[]")
    writer.close()
    assert mode_of(path) == 0o600
    assert [line["body"] for line in read_lines(path)] == ["{}", "[]"]


def test_writer_thread_writes_within_its_interval(tmp_path: Path) -> None:
    """The background thread writes and flushes while the daemon runs, not only at close."""
    path = tmp_path / "c.jsonl"
    writer = CaptureWriter(path, max_bytes=10**6, keep=1, dropped=Counter())
    writer.start()
    try:
        writer.add(time.time(), "10.0.0.1", 200, b'{"a": 1}')
        _wait_for(lambda: path.exists() and path.read_bytes().endswith(b"\n"))
    finally:
        writer.close()


def _wait_for(check: Callable[[], bool]) -> None:
    eventually_sync(check, "the line written", timeout_s=5)


def _item(body: bytes) -> Captured:
    return Captured(time.time(), "10.0.0.1", 200, body, len(body))
