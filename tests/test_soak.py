"""``mtt-router bench --soak``, short: a real daemon process under ~20 s of whole call lifecycles
(answered, released, not answered), then every map, the task count and the descriptors back
where they started.

Counts only, never timings: the run may be slow on a loaded machine, it must not be leaky.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from router.bench import probe
from router.bench.runner import BenchSettings, bench_rig
from router.bench.soak import ANSWERED, RELEASED, UNANSWERED, Soak, SoakSettings
from router.cli import main
from router.commands.bench import duration
from tests.polling import eventually

SOAK = SoakSettings(
    bench=BenchSettings(
        rate=25.0, duration_s=20.0, warmup_s=2.0, workplaces=50, callers=500, talk_ms=500.0
    ),
    sample_every_s=5.0,
)
"""25 calls/s for 20 s: 500 calls, some 25 on the line at any moment."""

DRAINING = ("answers", "presence", "presence_queue", "decisions", "oauth_states", "sources")
"""Maps that hold a call only while it lives: back to their size at the start once all ended."""
KEEPING = ("claims", "audit")
"""Maps that keep every call id until their TTL (an hour and more) or their limit."""
RECENT_PAST = ("history", "number_cache")
"""What keeps the recent past by design, held to its limit only: the status page's history (the
last 50 decisions, hourly cells for 24 h, decided calls waiting for their answer) and the
numbers normalised lately (an LRU cache of callers)."""

FD_TOLERANCE = 16
"""Open descriptors the daemon may hold above its start once the calls ended: keep-alive
connections. Both pools grow to the most connections the run needed at once and shrink only at
their keep-alive timeouts (the daemon's MTT client: 30 s; its server side of the simulator's
webhook connections: 75 s), which this test does not wait for. Measured with this test's load
(three runs each): on an idle 2-core machine the drift was 0 to +1 (at most 6 connections open
during the run); with both cores also busy with two spinning processes, -5 to +3 (at most 17
connections open, the start itself up to 12). The drift can never exceed the connections opened
beyond those at the start; 16 covers the worst peak measured. That every descriptor above the
start is such a connection is checked exactly (``fds_besides_connections``), as are the tasks
(aiohttp runs one per server connection: ``tasks_besides_connections``)."""


def _not_back(base: probe.Vitals, now: probe.Vitals, calls: int) -> list[str]:
    """What is not back at its start (or, for the maps that keep ids, at start + calls)."""
    assert base.bounds is not None
    if now.bounds is None:
        return ["/status did not answer"]
    wrong = []
    for name, (size, most) in now.bounds.items():
        start = base.bounds.get(name, (0, most))[0]
        want = min(most, start + calls) if name in KEEPING else start
        if name in RECENT_PAST:
            want = size if size <= most else most
        if size != want:
            wrong.append(f"{name}: {size} (want {want})")
    for what in ("fds_besides_connections", "tasks_besides_connections"):
        if getattr(now, what) != getattr(base, what):
            wrong.append(f"{what}: {getattr(now, what)} (want {getattr(base, what)})")
    assert now.fds is not None
    assert base.fds is not None
    if now.fds > base.fds + FD_TOLERANCE:
        wrong.append(f"fds: {now.fds} (start {base.fds} + at most {FD_TOLERANCE})")
    return wrong


@pytest.mark.slow
@pytest.mark.timeout(150)
async def test_a_soak_comes_back_to_its_baseline(tmp_path: Path) -> None:
    """500 calls over 20 s: every one routed and ended; maps filled while they lived; then the
    maps, tasks and descriptors are where they were after the warm-up."""
    settings = replace(SOAK, bench=replace(SOAK.bench, workdir=tmp_path))
    async with bench_rig(settings.bench, settings.sim_config()) as rig:
        soak = Soak(rig, settings)
        await soak.drive(settings.bench.warmup_s)
        base = await soak.vitals()
        assert base.bounds is not None, "/status has no 'bounds'"
        assert set(DRAINING + KEEPING) <= set(base.bounds)
        assert base.tasks is not None
        assert base.fds is not None
        assert base.conns is not None

        tally, samples = await soak.drive(settings.bench.duration_s, sample_every_s=2.0)
        calls = tally.to_json()
        assert calls["sent"] == 500
        assert set(calls["by_kind"]) == {ANSWERED, RELEASED, UNANSWERED}
        assert (calls["routed"], calls["missed"]) == (500, 0)
        assert (calls["webhook_errors"], calls["violations"]) == (0, 0)
        assert 0 < calls["connected"] < 500  # the unanswered ones never connect
        # While calls lived, the maps that follow them held some (the soak exercised them).
        peak = probe.peak(samples)
        assert all(peak[name] for name in ("answers", "presence")), peak

        last: list[str] = []

        async def back() -> bool:
            last[:] = _not_back(base, await soak.vitals(), 500)
            return not last

        try:
            await eventually(back, "maps, tasks and FDs back at the start", timeout_s=30.0)
        except AssertionError as exc:
            raise AssertionError(f"{exc}: {last}") from None


def test_durations_read_seconds_and_minutes() -> None:
    """``--duration 300``, ``300s``, ``5m``, ``2.5min``."""
    assert [duration(t) for t in ("300", "300s", "5m", "2.5min")] == [300, 300, 300, 150]


def test_soak_and_flood_refuse_bad_flags(capsys: pytest.CaptureFixture[str]) -> None:
    """--soak and --flood exclude each other; a flood needs posts, a soak a positive period."""
    with pytest.raises(SystemExit):
        main(["bench", "--soak", "--flood", "10"])
    assert "not allowed with" in capsys.readouterr().err
    assert main(["bench", "--flood", "0"]) == 2
    assert "--flood" in capsys.readouterr().err
    assert main(["bench", "--soak", "--sample-every", "0"]) == 2
    assert "--sample-every" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["bench", "--soak", "--duration", "five"])
    assert "not a duration" in capsys.readouterr().err


def test_a_daemon_without_bounds_or_tasks_reads_as_na() -> None:
    """An older daemon's /status (no "bounds", no "tasks"): the numbers are None, the table
    says n/a; a malformed bound is skipped, not fatal."""
    assert probe.parse_bounds(None) is None
    assert probe.parse_bounds({"claims": {"size": 3, "max": 10}, "odd": {"size": "x"}}) == {
        "claims": (3, 10)
    }
    start = probe.Vitals(0.0, 50.0, 20, (3, 1), None, None)
    end = probe.Vitals(9.0, 51.5, 22, (4, 2), None, None)
    assert (end.fds_besides_connections, end.tasks_besides_connections) == (16, None)
    drift = probe.drift(start, end)
    assert (drift["rss_mb"], drift["fds"], drift["tasks"]) == (1.5, 2, None)
    lines = probe.table([("start", start.flat()), ("drift", drift)], {}, signed=("drift",))
    rows = {line.split("  ")[0].strip(): line.split()[-2:] for line in lines.splitlines()[1:]}
    assert rows["open fds"] == ["20", "+2"]
    assert rows["asyncio tasks"] == ["n/a", "n/a"]
    assert rows["bounded maps"] == ["n/a", "n/a"]
