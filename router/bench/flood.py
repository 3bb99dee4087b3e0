"""``mtt-router bench --flood N``: N forged ``trying`` notifications while real calls flow.

The forged notifications (:mod:`router.bench.forged`: every field at its longest, half of them
parked calls) are POSTed over a pool of keep-alive connections as fast as it goes, from this
process, while the simulator (in this process too) places real calls at a steady rate with their
whole lifecycle. The daemon started here has ``server.max_inflight`` :data:`MAX_INFLIGHT`.

Reported: posts per second and their answers; what became of the real calls placed during the
flood and their decision latency at the simulator (p50/p99: it includes this process's own lag
while it posts); the daemon's decisions by outcome (``/metrics``); its RSS before, at its peak
(read every :data:`RSS_EVERY_S`) and after; its open FDs, tasks and bounded maps before, right
after the last post, and once every call has ended.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import aiohttp

from router.bench import probe, proc
from router.bench.files import callers
from router.bench.forged import CONCURRENCY, Posted, forged_bodies, post_all
from router.bench.load import percentile, wait_quiet
from router.bench.runner import BenchError, BenchSettings, Rig, bench_rig
from router.simulator import CallOutcome, SimConfig, generated_workplaces
from router.simulator.records import SimCall

RSS_EVERY_S = 0.1
SETTLE_S = 1.0
QUIET_TIMEOUT_S = 60.0
MAX_INFLIGHT = 50
"""``server.max_inflight`` of the daemon started for a flood (the daemon's default is 1000)."""


@dataclass(frozen=True)
class FloodSettings:
    """The daemon and the real calls' rate come from ``bench`` (``max_inflight`` included)."""

    bench: BenchSettings = field(
        default_factory=lambda: BenchSettings(
            rate=20.0, duration_s=0.0, talk_ms=200.0, warmup_s=2.0, max_inflight=MAX_INFLIGHT
        )
    )
    forged: int = 20_000
    concurrency: int = CONCURRENCY
    after_s: float = 1.0
    """Real calls go on this long after the last forged POST."""

    def sim_config(self) -> SimConfig:
        """Generated workplaces answering at once, short calls, every lifecycle notified."""
        b = self.bench
        return SimConfig(
            workplaces=generated_workplaces(b.workplaces),
            answer_after_ms=b.answer_after_ms,
            talk_ms=b.talk_ms,
            record_delay_ms=b.record_delay_ms,
            ring_timeout_ms=1000.0,
            call_log_size=100_000,
            request_log_size=1000,
            seed=1,
        )


@dataclass
class RealCalls:
    """Real calls (callers the rules know) placed at a steady rate until told to stop."""

    rig: Rig
    rate: float
    callers: list[str]
    calls: list[SimCall] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self) -> None:
        """Place calls until :attr:`stop` is set."""
        loop, sim = asyncio.get_running_loop(), self.rig.sim
        callee, start = sim.config.numbers[0], loop.time()
        for i in itertools.count():
            if self.stop.is_set():
                return
            self.calls.append(sim.start_call(self.callers[i % len(self.callers)], callee))
            await asyncio.sleep(max(0.0, start + (i + 1) / self.rate - loop.time()))


def real_summary(calls: list[SimCall]) -> dict[str, Any]:
    """Outcomes of real calls and their decision latency at the simulator (ms)."""
    outcomes = Counter(str(c.outcome) for c in calls)
    lat = sorted(
        lat * 1000.0 for c in calls if (lat := c.decision_latency_s) is not None and not c.late
    )
    return {
        "placed": len(calls),
        "outcomes": dict(outcomes),
        "transferred": outcomes[str(CallOutcome.TRANSFERRED)],
        "missed": outcomes[str(CallOutcome.PBX_TIMEOUT)],
        "p50_ms": _r(percentile(lat, 50)),
        "p99_ms": _r(percentile(lat, 99)),
        "max_ms": _r(lat[-1] if lat else None),
    }


def _r(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


async def decisions(http: aiohttp.ClientSession, admin_url: str) -> Counter[str] | None:
    """``mtt_router_decisions_total`` by outcome, from the daemon's ``/metrics`` (``None``: no
    answer)."""
    raw = await probe.fetch(http, f"{admin_url}/metrics")
    if raw is None:
        return None
    out: Counter[str] = Counter()
    for line in raw.decode("utf-8", "replace").splitlines():
        if line.startswith('mtt_router_decisions_total{outcome="'):
            name, value = line.split('"')[1], line.rsplit(" ", 1)[1]
            out[name] = round(float(value))
    return out


class RssPeak:
    """The daemon's highest RSS, read every :data:`RSS_EVERY_S` while it runs."""

    def __init__(self, pid: int | None) -> None:
        self.pid = pid
        self.peak_mb: float | None = None

    async def run(self) -> None:
        """Read until cancelled."""
        while self.pid is not None:
            rss = proc.rss_bytes(self.pid)
            if rss is not None:
                self.peak_mb = max(self.peak_mb or 0.0, round(rss / 2**20, 1))
            await asyncio.sleep(RSS_EVERY_S)


@dataclass
class FloodReport:
    """Settings, the posts, the real calls, the daemon's decisions and readings."""

    settings: dict[str, Any]
    daemon: dict[str, Any]
    posted: Posted
    real_during: dict[str, Any]
    real_all: dict[str, Any]
    decisions: dict[str, int]
    """Decisions by outcome made during the run (``/metrics`` after minus before)."""
    before: probe.Vitals
    flooded: probe.Vitals
    """Read right after the last forged POST was answered."""
    after: probe.Vitals
    rss_peak_mb: float | None

    def to_json(self) -> dict[str, Any]:
        """Plain JSON for ``--json``."""
        return {
            "mode": "flood",
            "settings": self.settings,
            "daemon": self.daemon,
            "posts": self.posted.to_json(),
            "real_calls_during_flood": self.real_during,
            "real_calls_all": self.real_all,
            "decisions": self.decisions,
            "rss_mb": {
                "before": self.before.rss_mb,
                "peak": self.rss_peak_mb,
                "after": self.after.rss_mb,
            },
            "before": self.before.to_json(),
            "flooded": self.flooded.to_json(),
            "after": self.after.to_json(),
            "drift": probe.drift(self.before, self.after),
        }

    def text(self) -> str:
        """The human-readable summary."""
        p, r, s = self.posted.to_json(), self.real_during, self.settings
        readings = [self.before, self.flooded, self.after]
        columns = [
            ("before", self.before.flat()),
            ("flooded", self.flooded.flat()),
            ("after", self.after.flat()),
            ("drift", probe.drift(self.before, self.after)),
        ]
        outcomes = ", ".join(f"{k} {v}" for k, v in sorted(self.decisions.items()))
        return "\n".join(
            [
                f"flood: {p['sent']} forged trying in {p['seconds']} s = {p['posts_per_s']} "
                f"posts/s over {s['concurrency']} connections; answers {p['statuses']}"
                + (f", errors {p['errors']}" if p["errors"] else ""),
                f"real calls during the flood ({s['rate']:g}/s): {r['placed']} placed, "
                f"{r['transferred']} transferred, {r['missed']} missed; decision p50 "
                f"{r['p50_ms']} ms p99 {r['p99_ms']} ms max {r['max_ms']} ms",
                f"daemon decisions (max_inflight {s['max_inflight']}): {outcomes or 'none'}",
                f"rss MB: before {self.before.rss_mb}, peak {self.rss_peak_mb}, after "
                f"{self.after.rss_mb}",
                probe.table(columns, probe.maxima(readings), signed=("drift",)),
            ]
        )


class Flood:
    """One flood on a rig, in steps a test can take one at a time."""

    def __init__(self, rig: Rig, settings: FloodSettings) -> None:
        self.rig = rig
        self.settings = settings
        self.callers = callers(settings.bench.callers)
        self.real = RealCalls(rig, settings.bench.rate, self.callers)
        self.rss = RssPeak(rig.daemon.pid)
        self.t0 = time.monotonic()
        self._tasks: list[asyncio.Task[None]] = []

    async def read(self) -> probe.Vitals:
        """The daemon now."""
        d = self.rig.daemon
        return await probe.read(self.rig.http, d.admin_url, d.pid, time.monotonic() - self.t0)

    async def decisions(self) -> Counter[str]:
        """The daemon's decisions so far by outcome."""
        found = await decisions(self.rig.http, self.rig.daemon.admin_url)
        if found is None:
            raise BenchError("the daemon's /metrics did not answer")
        return found

    async def warm_up(self) -> None:
        """Real calls for ``warmup_s``, then until they all ended."""
        warm = RealCalls(self.rig, self.settings.bench.rate, self.callers)
        task = asyncio.create_task(warm.run())
        await asyncio.sleep(self.settings.bench.warmup_s)
        warm.stop.set()
        await task
        await wait_quiet(self.rig.sim, QUIET_TIMEOUT_S)
        self.t0 = time.monotonic()

    async def flood(self) -> tuple[Posted, int]:
        """Start the real calls and the RSS watch, post every forged notification; return what
        the posts got and how many real calls were placed meanwhile."""
        self._tasks = [asyncio.create_task(self.real.run()), asyncio.create_task(self.rss.run())]
        bodies = forged_bodies(self.settings.forged, self.rig.sim.config.numbers)
        posted = await post_all(self.rig.daemon.events_url, bodies, self.settings.concurrency)
        return posted, len(self.real.calls)

    async def wind_down(self) -> None:
        """Real calls for ``after_s`` more, then until every call ended; stop watching RSS."""
        await asyncio.sleep(self.settings.after_s)
        self.real.stop.set()
        await wait_quiet(self.rig.sim, QUIET_TIMEOUT_S)
        await asyncio.sleep(SETTLE_S)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


async def run_flood(
    settings: FloodSettings, progress: Callable[[str], None] | None = None
) -> FloodReport:
    """Warm up with real calls, read the daemon, flood it while real calls go on, read it again
    right after the flood and once every call has ended."""
    say = progress or (lambda _line: None)
    b = settings.bench
    async with bench_rig(b, settings.sim_config()) as rig:
        flood = Flood(rig, settings)
        if b.warmup_s > 0:
            say(f"warm-up: real calls at {b.rate:g}/s for {b.warmup_s:g} s")
            await flood.warm_up()
        before, decided0 = await flood.read(), await flood.decisions()
        say(f"flood: {settings.forged} forged trying over {settings.concurrency} connections")
        posted, during = await flood.flood()
        flooded = await flood.read()
        await flood.wind_down()
        after, decided = await flood.read(), await flood.decisions()
    summary = {k: v for k, v in asdict(b).items() if k in _SETTINGS}
    summary |= {k: v for k, v in asdict(settings).items() if k != "bench"}
    return FloodReport(
        settings=summary,
        daemon=rig.daemon.describe,
        posted=posted,
        real_during=real_summary(flood.real.calls[:during]),
        real_all=real_summary(flood.real.calls),
        decisions={k: decided[k] - decided0[k] for k in decided if decided[k] > decided0[k]},
        before=before,
        flooded=flooded,
        after=after,
        rss_peak_mb=flood.rss.peak_mb,
    )


_SETTINGS = ("rate", "warmup_s", "workplaces", "callers", "talk_ms", "log_level", "max_inflight")
