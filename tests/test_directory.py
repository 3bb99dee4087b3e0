"""The directory against the simulator: terminals with the workplaces, unknown number lists,
what replicas share, and the workplace rule read through it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest

from router import callmodel
from router.directory import Directory
from router.errors import ServerError
from router.events import CallEvent, CallRef, CallState, CallType, Party
from router.metrics import Metrics
from router.mtt.client import MttClient, make_session
from router.simulator import EndpointFault, SimConfig, Simulator
from router.state.memory import MemoryTokenStore
from tests.mtt_support import issued_set, manager
from tests.polling import eventually

NUMBER, OTHER = "74996497803", "78005560251"
IVANOV = "883140777716581"
DESK, MOBILE = "883140000000001", "883140000000002"


@pytest.fixture
def sim_config() -> SimConfig:
    """Ivanov's workplace has two terminals."""
    return SimConfig(terminals={DESK: IVANOV, MOBILE: IVANOV}, seed=1)


@dataclass
class Snapshot:
    """What a shared store answers ``load`` with."""

    data: Any


class SharedStore:
    """An in-memory :class:`router.state.protocols.SharedDirectory` (what Redis does, in one
    process): saves are kept by kind and announced to every watcher."""

    def __init__(self) -> None:
        self.saved: dict[str, Any] = {}
        self.version = 0
        self._watchers: list[asyncio.Queue[tuple[str, int]]] = []

    async def save(self, kind: str, data: Any) -> int:
        self.saved[kind] = data
        self.version += 1
        for queue in self._watchers:
            queue.put_nowait((kind, self.version))
        return self.version

    async def load(self, kind: str) -> Any:
        return Snapshot(self.saved[kind]) if kind in self.saved else None

    async def watch(self, callback: Callable[[str, int], Awaitable[None]]) -> None:
        queue: asyncio.Queue[tuple[str, int]] = asyncio.Queue()
        self._watchers.append(queue)
        while True:
            await callback(*await queue.get())


@pytest.fixture
async def api(sim: Simulator) -> AsyncIterator[Callable[[str], MttClient]]:
    """Makes API clients with a live token of the simulator, for an API URL."""
    session: aiohttp.ClientSession = make_session()
    tokens = manager(session, sim, MemoryTokenStore(issued_set(sim)))
    await tokens.load()
    try:
        yield lambda url: MttClient(session, url, tokens, Metrics())
    finally:
        await session.close()


@pytest.fixture
def client(sim: Simulator, api: Callable[[str], MttClient]) -> MttClient:
    """An API client on the simulator."""
    return api(sim.url)


def numbers(directory: Directory) -> tuple[frozenset[str] | None, str | None]:
    """The directory's numbers and why they are unknown, read anew (no narrowing)."""
    return directory.numbers, directory.numbers_unknown


def connected_at(account: str, sip_id: str = NUMBER) -> CallEvent:
    """A connected incoming leg with ``id`` and ``accountId`` on the PBX side."""
    callee = Party(id=sip_id, account_id=account)
    return CallEvent(
        CallRef("c1"), CallState.CONNECTED, CallType.INCOMING, Party(id="79219462761"), callee
    )


async def test_terminals_come_with_the_workplaces(sim: Simulator, client: MttClient) -> None:
    """terminalsInfo is fetched with the workplaces; the rule maps a terminal to its workplace."""
    directory = Directory(client, Metrics())
    assert callmodel.pbx_view(directory) is directory
    assert directory.terminal_workplaces == {}
    directory.start()
    try:
        await eventually(lambda: directory.terminals is not None, "terminals fetched")
        assert directory.terminal_workplaces[MOBILE] == IVANOV
        assert callmodel.workplace_of(connected_at(MOBILE), directory) == IVANOV
        assert callmodel.workplace_of(connected_at(MOBILE, "883149999999999"), directory) == IVANOV
        # workplacesChanged brings the terminals again.
        sim.pbx.set_terminals(IVANOV, [DESK])
        directory.request_refresh("workplaces")
        await eventually(lambda: MOBILE not in directory.terminal_workplaces, "terminals again")
        assert callmodel.workplace_of(connected_at(MOBILE), directory) is None
        assert len(sim.requests_to("terminalsInfo")) == 2
    finally:
        await directory.close()


async def test_an_unread_number_list_is_unknown(sim: Simulator, client: MttClient) -> None:
    """A total above the list: numbers unknown with the reason; the parking rule falls back to
    what routing.park names; a full answer makes them known again."""
    sim.quirks.list_total_extra = 1
    directory = Directory(client, Metrics(), park=["8 (499) 649-78-03"])
    assert directory.numbers_unknown == "not fetched yet"
    await directory.refresh_numbers()
    assert directory.numbers is None
    assert directory.numbers_unknown == "MTT's answer was not read in full: total 3 but 2 read"
    assert directory.park_named == {NUMBER}
    assert directory.raw_numbers == (NUMBER, OTHER)
    sim.quirks.list_total_extra = 0
    await directory.refresh_numbers()
    assert numbers(directory) == (frozenset({NUMBER, OTHER}), None)
    assert Directory(client, Metrics(), park="all").park_named == frozenset()


async def test_a_failed_first_fetch_says_why(sim: Simulator, client: MttClient) -> None:
    """MTT failing before any answer: still "not fetched yet", with the error."""
    sim.faults.set("externalNumbersInfo", EndpointFault(status=503))
    directory = Directory(client, Metrics())
    with pytest.raises(ServerError):
        await directory.refresh_numbers()
    assert directory.numbers_unknown is not None
    assert directory.numbers_unknown.startswith("not fetched yet (ServerError: ")


async def test_replicas_share_terminals_and_an_unknown_list(
    sim: Simulator, client: MttClient, api: Callable[[str], MttClient]
) -> None:
    """What one replica fetched, another adopts: the terminals, and a list it could not read."""
    shared = SharedStore()
    fetching = Directory(client, Metrics(), shared=shared)
    # The sibling's MTT is unreachable: all it knows comes through the store.
    sibling = Directory(api("http://127.0.0.1:1"), Metrics(), shared=shared)
    sibling.start()
    try:
        sim.quirks.list_total_extra = 1
        await fetching.refresh_numbers()
        await fetching.refresh_terminals()
        assert shared.saved["numbers"] == {
            "numbers": [NUMBER, OTHER],
            "unread": "total 3 but 2 read",
        }
        await eventually(lambda: sibling.terminals is not None, "terminals adopted")
        assert sibling.terminal_workplaces[DESK] == IVANOV
        assert (sibling.numbers, sibling.raw_numbers) == (None, (NUMBER, OTHER))
        assert sibling.numbers_unknown is not None
        sim.quirks.list_total_extra = 0
        await fetching.refresh_numbers()
        assert shared.saved["numbers"] == [NUMBER, OTHER]
        known = (frozenset({NUMBER, OTHER}), None)
        await eventually(lambda: numbers(sibling) == known, "the known list adopted")
    finally:
        await sibling.close()


async def test_a_burst_of_changes_costs_one_fetch_per_interval_and_the_last_is_fetched(
    sim: Simulator, client: MttClient
) -> None:
    """200 numbersChanged in a burst, the numbers changing all along: fetches are at most one per
    interval (plus the start-up load), and what the directory ends with is the last change."""
    directory = Directory(client, Metrics(), min_interval_s=0.5)
    directory.start()
    loop = asyncio.get_running_loop()
    try:
        await eventually(lambda: directory.numbers is not None, "numbers loaded")
        started = loop.time()
        for i in range(200):
            sim.pbx.set_numbers([NUMBER, f"7800555{i:04d}"])
            directory.request_refresh("numbers")
            await asyncio.sleep(0.005)
        last = f"7800555{199:04d}"
        wanted = frozenset({NUMBER, last})
        await eventually(lambda: directory.numbers == wanted, "the last change fetched")
        elapsed = loop.time() - started
        fetches = len(sim.requests_to("externalNumbersInfo")) - 1  # the start-up load
        # One round at once, then at most one per 0.5 s of the burst and its tail.
        assert 2 <= fetches <= 2 + elapsed / 0.5, (fetches, elapsed)
        assert fetches < 20  # not one per notification
    finally:
        await directory.close()
