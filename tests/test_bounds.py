"""Every map keyed by what the internet sends is bounded, and ``/status`` shows how full each is."""

from __future__ import annotations

import asyncio
import copy
import json
from pathlib import Path
from typing import Any

from router.presence_queue import PresenceQueue
from tests.fixtures.daemon import (
    IVANOV_CLIENT,
    IVANOV_WP,
    NUMBER,
    StartDaemon,
    outcome_of,
)
from tests.polling import eventually

EXAMPLES = {
    e["name"]: e["payload"]
    for e in json.loads(
        (Path(__file__).parent / "data" / "doc_notifications.json").read_text(encoding="utf-8")
    )["examples"]
}


def connected(call_id: str, workplace: str) -> dict[str, Any]:
    """The document's outgoing ``connected`` example, for ``call_id`` from ``workplace``."""
    body: dict[str, Any] = copy.deepcopy(EXAMPLES["connected_outgoing"])
    info = body["result"]["callInfo"]
    info["call"]["id"] = call_id
    info["caller"]["accountId"] = workplace
    info["caller"]["id"] = workplace
    return body


async def test_status_shows_every_bound(start_daemon: StartDaemon, tmp_path: Path) -> None:
    """/status "bounds": each bounded map with its size and limit, and the process's tasks."""
    daemon = await start_daemon(
        park="all",
        extra={
            "server": {"max_inflight": 50},
            "log": {"capture": str(tmp_path / "capture.jsonl")},
        },
    )
    call = await daemon.sim.place_call(IVANOV_CLIENT, NUMBER, talk_ms=5000)
    assert await outcome_of(call) == "transferred"
    await daemon.wait_busy([IVANOV_WP], "the manager's workplace is on the call")

    status = await daemon.status()
    bounds = status["bounds"]
    assert set(bounds) >= {
        "answers",
        "audit",
        "capture_queue",
        "claims",
        "decisions",
        "number_cache",
        "learned",
        "learning",
        "lookup_cache",
        "oauth_states",
        "presence",
        "presence_queue",
        "reroute_marks",
        "reroutes",
        "sources",
    }
    for name, bound in bounds.items():
        assert 0 <= bound["size"] <= bound["max"], name
    assert bounds["claims"]["size"] == 1
    assert bounds["presence"]["size"] == 1
    assert bounds["sources"]["size"] == 1
    assert bounds["audit"]["size"] == 1
    assert bounds["answers"]["size"] == 0  # answered: the call left the tracker
    assert bounds["decisions"]["max"] == 50
    assert isinstance(status["tasks"], int)
    assert status["tasks"] > 0


async def test_presence_only_for_workplaces_the_directory_knows(
    start_daemon: StartDaemon,
) -> None:
    """Forged connected notifications for made-up workplaces leave presence empty; for a known
    workplace they cost at most its per-workplace limit."""
    daemon = await start_daemon()
    await daemon.wait_directory()
    posts = [daemon.post_event(connected(f"forged-{i}", f"88314{i:010d}")) for i in range(200)]
    assert {code for code, _ in await asyncio.gather(*posts)} == {200}
    posts = [daemon.post_event(connected(f"forged-known-{i}", IVANOV_WP)) for i in range(100)]
    assert {code for code, _ in await asyncio.gather(*posts)} == {200}

    async def known_one_busy() -> bool:
        return bool((await daemon.status())["engine"]["busy"] == [IVANOV_WP])

    await eventually(known_one_busy, "the known workplace is busy")
    presence = (await daemon.status())["bounds"]["presence"]
    assert presence["size"] == 32  # the per-workplace limit, not 100 (and none of the 200)


class HungPresence:
    """Presence whose storage never answers until released."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.applied: list[tuple[str, str]] = []

    async def set_busy(self, workplace: str, call_id: str, ttl_s: float) -> None:
        await self.release.wait()
        self.applied.append((workplace, call_id))

    async def set_free(self, workplace: str, call_id: str) -> None:
        await self.release.wait()
        self.applied.append((workplace, "-" + call_id))

    def busy(self) -> frozenset[str]:
        return frozenset()


async def test_presence_queue_is_bounded_while_the_storage_hangs() -> None:
    """A hung storage: the queue keeps its limit (the oldest dropped), the newest are applied."""
    presence = HungPresence()
    tasks: list[asyncio.Task[Any]] = []
    queue = PresenceQueue(
        presence, lambda coro: tasks.append(asyncio.create_task(coro)), max_queued=10
    )
    for i in range(100):
        queue.busy("w1", f"c{i}")
    assert queue.bound() == (10, 10)
    assert queue.dropped == 90
    await asyncio.sleep(0)  # the worker took the oldest change left and waits on the storage
    presence.release.set()
    await asyncio.gather(*tasks)
    assert presence.applied == [("w1", f"c{i}") for i in range(90, 100)]
    assert queue.bound().size == 0
