"""A flood: 20,000 forged ``trying`` notifications, every field at its longest (ids of 256
characters, names of 1024, 32 forwarders on every other one), to a parked number, posted over 64
keep-alive connections to a real daemon process with ``server.max_inflight: 50``, while the
simulator's real calls flow.

One flood for the module (it takes some 20 s); the tests judge what it left. Counts only, never
timings: a loaded machine posts slower, the counts are the same. None of the daemon's maps reaches
its limit with 20,000 calls (the smallest the flood fills, the audit, holds 50,000): the ones the
flood fills are checked to hold exactly every call they should, the others to be back where they
were.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace

import orjson
import pytest
import pytest_asyncio

from router.bench import probe
from router.bench.flood import MAX_INFLIGHT, Flood, FloodSettings, decisions
from router.bench.forged import Posted, forged_trying, parked_count
from router.bench.runner import BenchSettings, bench_rig
from router.errors import EventShapeError
from router.events import MAX_FORWARDERS, MAX_ID_CHARS, MAX_TEXT_CHARS, parse_call_info
from router.simulator import CallOutcome
from router.simulator.records import SimCall
from tests.polling import eventually
from tests.test_soak import FD_TOLERANCE

FORGED = 20_000
FLOOD = FloodSettings(
    bench=BenchSettings(
        rate=10.0,
        duration_s=0.0,
        talk_ms=200.0,
        warmup_s=1.0,
        workplaces=50,
        callers=500,
        max_inflight=MAX_INFLIGHT,
    ),
    forged=FORGED,
)

FLOOD_FD_TOLERANCE = MAX_INFLIGHT + FD_TOLERANCE
"""Keep-alive connections left open after the flood (see test_soak.FD_TOLERANCE): the daemon's
MTT client opens one per decision in flight, so up to ``max_inflight`` of them stay until its
30 s keep-alive ends. Measured: +59 descriptors right after a flood, 49 of them to MTT (the
simulator), 10 more of the simulator's webhook connections."""

FILLED = ("audit", "claims", "answers")
"""Maps that keep what the flood sent (call ids until their TTL or their limit)."""


@dataclass
class Flooded:
    """What the module's flood left behind."""

    posted: Posted
    before: probe.Vitals
    flooded: probe.Vitals
    after: probe.Vitals
    """The last reading, once back at the start (or when the wait gave up)."""
    not_back: list[str]
    """What was still not back when the wait gave up (empty: all was)."""
    decided: Counter[str]
    """Decisions during the flood and the wind-down, by outcome."""
    expected: int
    """Parked calls, forged and real: one decision each."""
    real: list[SimCall]
    during: int
    """Real calls placed while the flood was being posted (the first ``during`` of ``real``)."""
    violations: int


def _not_back(base: probe.Vitals, now: probe.Vitals, kept: dict[str, tuple[int, int]]) -> list[str]:
    """Which numbers are not where they should be after the flood: the maps that keep calls
    within ``kept`` (lowest, highest); every other map, the tasks and the descriptors besides
    connections as at the start; the descriptors within :data:`FLOOD_FD_TOLERANCE` of it."""
    assert base.bounds is not None
    if now.bounds is None:
        return ["/status did not answer"]
    wrong = []
    for name, (size, _) in now.bounds.items():
        start = base.bounds.get(name, (0, 0))[0]
        low, high = kept.get(name, (start, start))
        if not low <= size <= high:
            wrong.append(f"{name}: {size} (want {low}..{high})")
    for what in ("fds_besides_connections", "tasks_besides_connections"):
        if getattr(now, what) != getattr(base, what):
            wrong.append(f"{what}: {getattr(now, what)} (want {getattr(base, what)})")
    assert now.fds is not None
    assert base.fds is not None
    if now.fds > base.fds + FLOOD_FD_TOLERANCE:
        wrong.append(f"fds: {now.fds} (start {base.fds} + at most {FLOOD_FD_TOLERANCE})")
    return wrong


def _kept(base: probe.Vitals, decided: Counter[str], real: int) -> dict[str, tuple[int, int]]:
    """What the maps that keep calls should hold after the flood."""
    assert base.bounds is not None
    start = {name: size for name, (size, _) in base.bounds.items()}
    claimed = decided.total() - decided["shed"]  # every decision but a shed one claims its id
    return {
        # Every call id of 256 characters or less, forged or real, until the limit.
        "audit": (start["audit"] + FORGED + real,) * 2,
        "claims": (start["claims"] + claimed,) * 2,
        # Decided calls until connected or finished: the forged ones never are; the real ones
        # decided (at most all of them) were.
        "answers": (start["answers"] + claimed - real, start["answers"] + claimed),
        # The status page's recent past keeps what happened by design: held to its limit only.
        "history": (start["history"], base.bounds["history"][1]),
        "number_cache": (start["number_cache"], base.bounds["number_cache"][1]),
    }


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def flooded(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Flooded]:
    """Warm up, flood, wind down, then wait (bounded) for the daemon to be back at its start."""
    workdir = tmp_path_factory.mktemp("flood")
    settings = replace(FLOOD, bench=replace(FLOOD.bench, workdir=workdir))
    async with bench_rig(settings.bench, settings.sim_config()) as rig:
        flood = Flood(rig, settings)
        await flood.warm_up()
        before, decided0 = await flood.read(), await flood.decisions()
        posted, during = await flood.flood()
        flooded = await flood.read()
        await flood.wind_down()
        real = flood.real.calls
        # Every parked call, forged or real, gets exactly one outcome: the decisions are over
        # once that many were counted.
        expected = parked_count(FORGED) + len(real)

        async def all_decided() -> Counter[str] | None:
            now = await decisions(rig.http, rig.daemon.admin_url)
            if now is None:
                return None
            now.subtract(decided0)
            return +now if now.total() >= expected else None

        decided = await eventually(all_decided, f"{expected} decisions", timeout_s=30.0)
        kept = _kept(before, decided, len(real))
        readings = [before, flooded]
        wrong: list[str] = []

        async def back() -> bool:
            readings.append(await flood.read())
            wrong[:] = _not_back(before, readings[-1], kept)
            return not wrong

        with contextlib.suppress(AssertionError):  # judged by the tests, with what was wrong
            await eventually(back, "the daemon back at its start", timeout_s=30.0)
        yield Flooded(
            posted=posted,
            before=before,
            flooded=flooded,
            after=readings[-1],
            not_back=wrong,
            decided=decided,
            expected=expected,
            real=real,
            during=during,
            violations=len(rig.sim.violations()),
        )


def test_forged_notifications_are_the_longest_the_daemon_accepts() -> None:
    """Every field at its limit parses; one character (or forwarder) more is refused."""
    body = forged_trying(7, "74996497803", forwarded=True)
    info = orjson.loads(orjson.dumps(body))["result"]["callInfo"]
    event = parse_call_info(info)
    assert len(event.call.id) == len(event.call.tag or "") == MAX_ID_CHARS
    assert len(event.caller.id or "") == len(event.callee.account_id or "") == MAX_ID_CHARS
    assert len(event.caller.display_name or "") == len(event.reason or "") == MAX_TEXT_CHARS
    assert len(event.caller.forwarders) == len(event.callee.forwarders) == MAX_FORWARDERS
    assert {len(f) for f in event.caller.forwarders} == {MAX_ID_CHARS}
    assert event.callee.id == "74996497803"
    parked = forged_trying(8, "74996497803", forwarded=False)["result"]["callInfo"]
    assert not parse_call_info(parked).forwarded
    for longer in (
        {"call": {"id": info["call"]["id"] + "x"}},
        {"caller": {**info["caller"], "displayName": info["caller"]["displayName"] + "Я"}},
        {"callee": {**info["callee"], "forwarderList": [*info["callee"]["forwarderList"], "1"]}},
    ):
        with pytest.raises(EventShapeError):
            parse_call_info(info | longer)


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_every_forged_post_is_answered_and_each_parked_call_decided_once(
    flooded: Flooded,
) -> None:
    """20,000 POSTs, 20,000 200s; one outcome per parked call (forged or real), some shed."""
    assert flooded.posted.statuses == {200: FORGED}, flooded.posted.errors
    assert flooded.decided.total() == flooded.expected, flooded.decided
    assert flooded.decided["shed"] > 0  # max_inflight was reached: the cap did its work


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_maps_stay_within_their_bounds_through_a_flood(flooded: Flooded) -> None:
    """Every bounded map at or under its limit during and after the flood; the ones that keep
    calls hold exactly what they should (the others are back: the next test)."""
    for reading in (flooded.before, flooded.flooded, flooded.after):
        assert reading.bounds is not None
        over = {n: b for n, b in reading.bounds.items() if b[0] > b[1]}
        assert over == {}, f"at {reading.at_s:.1f} s"
    assert flooded.flooded.bounds is not None
    assert flooded.flooded.bounds["decisions"][0] <= MAX_INFLIGHT
    assert [w for w in flooded.not_back if w.split(":")[0] in FILLED] == []


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_tasks_descriptors_and_maps_come_back_after_a_flood(flooded: Flooded) -> None:
    """Once every call ended: presence, its queue and the decisions in flight back at the
    start; tasks and descriptors too (besides keep-alive connections, within a tolerance)."""
    assert flooded.not_back == []


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_no_real_call_is_acted_on_late_during_a_flood(flooded: Flooded) -> None:
    """Whatever became of a real call, no command reached it after its parking window, and the
    simulator saw no command act on a live call."""
    assert flooded.real
    assert all(c.outcome is not None for c in flooded.real)
    assert [c.id for c in flooded.real if c.late] == []
    assert flooded.violations == 0


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_real_calls_are_all_transferred_during_a_flood(flooded: Flooded) -> None:
    """Every real call placed while the flood was posted got its transfer: the real callers are
    listed clients, for whom the last fifth of max_inflight is kept (router/engine.py)."""
    during = flooded.real[: flooded.during]
    outcomes = Counter(str(c.outcome) for c in during)
    assert outcomes == {str(CallOutcome.TRANSFERRED): len(during)}
