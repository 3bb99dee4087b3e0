"""The fault matrix: the daemon against the simulator under each fault MTT (or Redis) can throw.

One row per fault. Each row starts a daemon, switches its fault on (``POST /_sim/faults``, or a
gate in front of the API, or a frozen Redis), places parked calls, and checks, call by call:

* how it ended: the daemon's outcome with the simulator's (transferred at a workplace, released
  by ``terminateCall``, or routed by the PBX when the window ended), a pair the row allows;
* what MTT answered the call's transferCall/terminateCall requests, and the commands rule of
  docs/CALL_MODEL.md: nothing after an answer that may have been applied (a 5xx, a drop), and at
  most one command carried out;
* ``GET /_sim/violations``: empty (the one exception: a command MTT reads after its window, which
  no daemon can prevent once it was sent, is that call's only violation);
* then, with the fault cleared, the next call is transferred.

The simulator's window is 1 s with a 700 ms budget (5 s and 3.5 s scaled down), 2 s with 1.4 s for
rows that need room (a whole-second Retry-After, a Redis op deadline, connect retries). Outcomes
only, never timings: where load may tip a decision either way, the row allows both endings.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlsplit

import pytest

from router.callmodel import CommandReason
from router.simulator import SimCall, SimConfig, Simulator
from tests.fixtures.daemon import (
    IVANOV_CLIENT,
    IVANOV_WP,
    NUMBER,
    OUTCOMES,
    PREFIX_CALLER,
    SIDOROV_WP,
    UNKNOWN_CALLER,
    RunningDaemon,
    StartDaemon,
    daemon_sim_config,
    finished,
    routed_to,
)
from tests.fixtures.net import RedisServer, free_port
from tests.polling import eventually

Ending = tuple[str, str, str | None]
"""(the daemon's outcome, the simulator's outcome, the workplace MTT transferred the call to)."""

TO_IVANOV: Ending = ("transferred", "transferred", IVANOV_WP)
TO_SIDOROV: Ending = ("transferred", "transferred", SIDOROV_WP)
"""IVANOV_CLIENT's candidates: ivanov, then the fallback sidorov, then release to the PBX."""
APPLIED_UNKNOWN: Ending = ("error", "transferred", IVANOV_WP)
"""MTT transferred the call, the daemon could not know (a 502 or a drop after the work)."""
LATE_APPLIED: Ending = ("missed_window", "transferred", IVANOV_WP)
"""MTT transferred the call at once, its answer came after the budget."""
RELEASED: Ending = ("error", "terminated", None)
"""Every candidate refused, the call released to the PBX at once."""
PBX_ERROR: Ending = ("error", "pbx_timeout", None)
"""Nothing applied; the PBX routed the call when the window ended."""
PBX_MISSED: Ending = ("missed_window", "pbx_timeout", None)

Setup = Literal["sim", "refused", "reset", "redis_hung", "vpbx_storm"]
Statuses = tuple[int | frozenset[int], ...] | frozenset[int]
"""A tuple: exactly these answers (or one of a set), in order; a set: any number of answers, each
one of these."""
LIVE_OR_OVER = frozenset({200, 404})
"""A command MTT reads after the window: carried out on the live call, or 404 once it is over."""


@dataclass(frozen=True)
class Cell:
    """One fault and what it may lead to."""

    name: str
    ends: frozenset[Ending]
    fault: dict[str, Any] = field(default_factory=dict)
    """The body of ``POST /_sim/faults``."""
    transfers: Statuses | None = None
    """What MTT answered the call's transferCall requests (0: the connection was dropped)."""
    terminates: Statuses = ()
    setup: Setup = "sim"
    calls: int = 1
    window_s: float = 1.0
    late: bool = False
    """MTT reads the transfer after its window: that call's one (unpreventable) violation."""
    max_refreshes: int | None = None
    """At most this many refresh grants while the fault lasts."""
    max_fetches: int | None = None
    """At most this many fetches of each directory list while the fault lasts."""
    sent: dict[str, range] = field(default_factory=dict)
    """How many requests the daemon started per method (for rows where MTT sees none)."""

    @property
    def budget_ms(self) -> int:
        return int(self.window_s * 700)


def ends(*endings: Ending) -> frozenset[Ending]:
    return frozenset(endings)


def on(endpoint: str, **fault: Any) -> dict[str, Any]:
    return {"endpoints": {endpoint: fault}}


def exactly(n: int) -> range:
    return range(n, n + 1)


def at_least(n: int) -> range:
    return range(n, 1_000)


# fmt: off
CELLS = [
    Cell("no_fault", ends(TO_IVANOV), transfers=(200,)),
    # API latency (5 s window, 3.5 s budget: here 1 s and 0.7 s)
    Cell("latency_within_budget", ends(TO_IVANOV), on("transferCall", latency_ms=150),
         transfers=(200,)),
    Cell("latency_beyond_window", ends(PBX_MISSED), on("transferCall", latency_ms=1500, count=1),
         transfers=(LIVE_OR_OVER,), late=True),
    Cell("slow_answer_after_apply", ends(LATE_APPLIED),
         on("transferCall", latency_ms=1500, after_apply=True, count=1), transfers=(200,)),
    # 5xx and dropped connections: may have been applied, so nothing more for that call
    Cell("5xx_on_transfer", ends(PBX_ERROR), on("transferCall", status=503, count=1),
         transfers=(503,)),
    Cell("502_after_apply", ends(APPLIED_UNKNOWN),
         on("transferCall", status=502, after_apply=True, count=1), transfers=(502,)),
    Cell("drop_before_apply", ends(PBX_ERROR), on("transferCall", drop=True, count=1),
         transfers=(0,)),
    Cell("drop_after_apply", ends(APPLIED_UNKNOWN),
         on("transferCall", drop=True, after_apply=True, count=1), transfers=(0,)),
    # Connections: refused (nothing sent: next candidate, then release) or reset before the
    # request is read (not applied, but the daemon cannot know: nothing more)
    Cell("connection_refused", ends(PBX_ERROR), setup="refused", transfers=(), window_s=2.0,
         sent={"terminateCall": at_least(1)}),
    Cell("connection_reset_before_read", ends(PBX_ERROR), setup="reset", transfers=(),
         sent={"transferCall": exactly(1), "terminateCall": exactly(0)}),
    # 401 storms: every request, fresh tokens included
    Cell("401_storm_short", ends(TO_SIDOROV, RELEASED, PBX_ERROR, PBX_MISSED), {"storm_401": 3},
         transfers=frozenset({401, 200}), terminates=frozenset({401, 200})),
    Cell("401_storm_endless", ends(PBX_ERROR, PBX_MISSED), {"storm_401": 10_000}, calls=3,
         transfers=frozenset({401}), terminates=frozenset({401}), max_refreshes=1),
    # 429 with Retry-After
    Cell("429_retry_after_within_budget", ends(TO_IVANOV),
         on("transferCall", status=429, retry_after_s=1, count=1), transfers=(429, 200),
         window_s=2.0),
    Cell("429_retry_after_beyond_budget", ends(TO_SIDOROV),
         on("transferCall", status=429, retry_after_s=5, count=1), transfers=(429, 200)),
    Cell("429_on_every_transfer", ends(RELEASED, PBX_MISSED),
         on("transferCall", status=429, retry_after_s=1), transfers=frozenset({429}),
         terminates=frozenset({200}), window_s=2.0),
    # The token endpoint down
    Cell("token_endpoint_down", ends(TO_IVANOV), {"token_endpoint_down": 503}, transfers=(200,)),
    Cell("token_endpoint_down_token_refused", ends(PBX_ERROR, PBX_MISSED),
         {"token_endpoint_down": 503, "revoke_access_tokens": True},
         transfers=frozenset({401}), terminates=frozenset({401})),
    Cell("token_endpoint_dropping_token_refused", ends(PBX_ERROR, PBX_MISSED),
         {"token_endpoint_down": "drop", "revoke_access_tokens": True},
         transfers=frozenset({401}), terminates=frozenset({401})),
    # Storage and the directory
    Cell("redis_hung", ends(TO_IVANOV), setup="redis_hung", transfers=(200,), window_s=2.0),
    Cell("vpbx_notification_storm", ends(TO_IVANOV), setup="vpbx_storm", transfers=(200,),
         max_fetches=2),
]
# fmt: on

CALLERS = (IVANOV_CLIENT, PREFIX_CALLER, UNKNOWN_CALLER)


@pytest.fixture
def sim_config(cell: Cell) -> SimConfig:
    """The row's parking window."""
    return daemon_sim_config(parking_window_s=cell.window_s)


@pytest.mark.parametrize("cell", [pytest.param(cell, id=cell.name) for cell in CELLS])
async def test_fault_matrix(
    cell: Cell, start_daemon: StartDaemon, sim: Simulator, request: pytest.FixtureRequest
) -> None:
    """Every parked call under the fault is transferred, released or left to the PBX, as the
    commands rule allows; the simulator records no violation; the next call is routed again."""
    async with contextlib.AsyncExitStack() as stack:
        daemon, heal = await start(cell, start_daemon, sim, request, stack)
        refreshes = sim.tokens.grants["refresh_token"]
        fetches = {e: len(sim.requests_to(e)) for e in ("externalNumbersInfo", "workPlacesInfo")}
        await apply_fault(cell, daemon)
        calls = await asyncio.gather(*(sim.place_call(c, NUMBER) for c in CALLERS[: cell.calls]))
        if cell.late:
            daemon.expect_violation(calls[0])
        await daemon.wait_decisions(cell.calls)
        sim_ends = [(str(await finished(call)), routed_to(call)) for call in calls]
        assert_endings(cell, {o: int(daemon.decisions(o)) for o in OUTCOMES}, sim_ends)
        for call in calls:
            await assert_commands(cell, sim, call)
        if cell.late:
            await eventually(lambda: calls[0].late, "MTT read the transfer after its window")
        async with daemon.http.get(f"{sim.url}/_sim/violations") as resp:
            violations = (await resp.json())["violations"]
        expected = [str(CommandReason.AFTER_WINDOW)] if cell.late else []
        assert [v["reason"] for v in violations] == expected
        for method, allowed in cell.sent.items():
            started = daemon.sample("mtt_router_api_request_seconds_count", method=method)
            assert started in allowed, (method, started)
        if cell.max_refreshes is not None:
            assert sim.tokens.grants["refresh_token"] - refreshes <= cell.max_refreshes
        if cell.max_fetches is not None:
            for endpoint, before in fetches.items():
                assert len(sim.requests_to(endpoint)) - before <= cell.max_fetches, endpoint
        # The fault cleared: the next call is transferred.
        async with daemon.http.delete(f"{sim.url}/_sim/faults") as resp:
            assert resp.status == 200
        await heal()
        transferred = daemon.decisions("transferred")
        after = await sim.place_call(IVANOV_CLIENT, NUMBER)
        assert await finished(after) == "transferred"
        await daemon.wait_decisions(transferred + 1, "transferred")
        await daemon.stop()  # before the row's Redis or gate goes away


# -- setting a row up ------------------------------------------------------------------------


async def start(
    cell: Cell,
    start_daemon: StartDaemon,
    sim: Simulator,
    request: pytest.FixtureRequest,
    stack: contextlib.AsyncExitStack,
) -> tuple[RunningDaemon, Callable[[], Awaitable[None]]]:
    """The row's daemon, and what heals the fault that the simulator's knobs do not hold."""

    async def nothing() -> None:
        pass

    if cell.setup in ("refused", "reset"):
        gate = await stack.enter_async_context(Gate(sim.url))
        daemon = await start_daemon(budget_ms=cell.budget_ms, extra={"mtt": {"api_url": gate.url}})
        await (gate.refuse() if cell.setup == "refused" else gate.reset())
        return daemon, gate.open
    if cell.setup == "redis_hung":
        redis: RedisServer = request.getfixturevalue("redis_server")
        daemon = await start_daemon(
            budget_ms=cell.budget_ms, storage=redis.url, authorised=False, wait_ready=False
        )
        async with daemon.http.get(daemon.admin_url + "/oauth/start") as resp:
            assert resp.status == 200
        await daemon.wait_directory()
        await eventually(lambda: ready(daemon), "/readyz answers 200 with Redis")
        assert redis.proc is not None
        pid = redis.proc.pid
        os.kill(pid, signal.SIGSTOP)
        stack.callback(os.kill, pid, signal.SIGCONT)  # whatever happens below

        async def thaw() -> None:
            os.kill(pid, signal.SIGCONT)

        return daemon, thaw
    return await start_daemon(budget_ms=cell.budget_ms), nothing


async def apply_fault(cell: Cell, daemon: RunningDaemon) -> None:
    if cell.fault:
        async with daemon.http.post(f"{daemon.sim.url}/_sim/faults", json=cell.fault) as resp:
            assert resp.status == 200, await resp.text()
    if cell.setup == "vpbx_storm":
        for i in range(20):
            await daemon.sim.notify_vpbx("numbersChanged" if i % 2 else "workplacesChanged")


async def ready(daemon: RunningDaemon) -> bool:
    return (await daemon.admin("/readyz"))[0] == 200


# -- what is checked -------------------------------------------------------------------------


def assert_endings(
    cell: Cell, outcomes: dict[str, int], sim_ends: list[tuple[str, str | None]]
) -> None:
    """The daemon's outcomes can be paired with the simulator's endings as the row allows."""
    assert sum(outcomes.values()) == cell.calls, outcomes
    daemon_side = [o for o, n in outcomes.items() for _ in range(n)]
    pairings = (zip(order, sim_ends, strict=True) for order in itertools.permutations(daemon_side))
    fits = any(all((o, *s) in cell.ends for o, s in pairs) for pairs in pairings)
    assert fits, f"daemon {sorted(daemon_side)}, simulator {sim_ends}; allowed {set(cell.ends)}"


def answers(sim: Simulator, call: SimCall, endpoint: str) -> list[int]:
    """What MTT answered ``endpoint`` requests for ``call``, in order (0: dropped or pending)."""
    return [r.status for r in sim.requests_to(endpoint) if call_id(r.body) == call.id]


def call_id(body: Any) -> str | None:
    params = body.get("params") if isinstance(body, dict) else None
    ref = params.get("call") if isinstance(params, dict) else None
    value = ref.get("id") if isinstance(ref, dict) else None
    return value if isinstance(value, str) else None


def fits(got: list[int], expected: Statuses | None) -> bool:
    if expected is None:
        return True
    if isinstance(expected, tuple):
        return len(got) == len(expected) and all(
            g in e if isinstance(e, frozenset) else g == e
            for g, e in zip(got, expected, strict=True)
        )
    return set(got) <= expected


async def assert_commands(cell: Cell, sim: Simulator, call: SimCall) -> None:
    """The call's requests as the row expects (once slow ones were answered), and the rule."""

    def as_expected() -> bool:
        return fits(answers(sim, call, "transferCall"), cell.transfers) and fits(
            answers(sim, call, "terminateCall"), cell.terminates
        )

    with contextlib.suppress(AssertionError):
        await eventually(as_expected, "MTT answered the call's commands as the row expects")
    got = (answers(sim, call, "transferCall"), answers(sim, call, "terminateCall"))
    assert as_expected(), f"transferCall {got[0]}, terminateCall {got[1]}"
    # Nothing after an answer that may have been applied; at most one command carried out.
    records = sorted(
        (r for e in ("transferCall", "terminateCall") for r in sim.requests_to(e)),
        key=lambda r: r.received_at,
    )
    statuses = [r.status for r in records if call_id(r.body) == call.id]
    ambiguous = [i for i, status in enumerate(statuses) if status == 0 or status >= 500]
    assert ambiguous in ([], [len(statuses) - 1]), statuses
    assert sum(c.accepted for c in call.commands) <= 1


# -- a gate in front of the API --------------------------------------------------------------


class Gate:
    """A TCP forwarder between the daemon and the simulator's API (the daemon's ``mtt.api_url``),
    for the two connection faults no fault knob can play: nobody listening (the daemon's connect
    is refused: nothing was sent) and a connection reset before the request is read."""

    def __init__(self, target_url: str) -> None:
        parts = urlsplit(target_url)
        assert parts.hostname is not None
        assert parts.port is not None
        self._target = (parts.hostname, parts.port)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._resetting = False
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[Any]] = set()

    async def __aenter__(self) -> Gate:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.refuse()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def open(self) -> None:
        """Forward every connection."""
        self._resetting = False
        if self._server is None:
            self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)

    async def refuse(self) -> None:
        """Stop listening (a connect is refused) and cut the connections open now."""
        if self._server is not None:
            self._server.close()
            self._server = None
        self._cut()

    async def reset(self) -> None:
        """Accept each connection, then reset it unread; cut the connections open now."""
        await self.open()
        self._resetting = True
        self._cut()

    def _cut(self) -> None:
        for writer in self._writers:
            writer.transport.abort()
        self._writers.clear()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._resetting:
            writer.transport.abort()
            return
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._target)
        except OSError:
            writer.transport.abort()
            return
        self._writers.update((writer, up_writer))
        try:
            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        finally:
            self._writers.difference_update((writer, up_writer))
            self._tasks.discard(task)


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy until either side closes, then close both."""
    with contextlib.suppress(OSError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    writer.transport.abort()
