"""``mtt-router bench --soak``: minutes at a steady rate, every call living its whole life, and the
daemon's RSS, open FDs, asyncio tasks and bounded maps at the start, at the end and in between.

Calls come in cycles of ten (:class:`CallMix`): eight are answered (a known caller, transferCall
to the caller's manager, showing, connected, some talk, finished, recorded); one is released (an
unknown caller: the daemon terminates, the PBX rings the number's own route); one is never
answered (the manager's workplace and the route do not pick up: showing, hiding, the route rung,
finished with nobody). Presence, the answer tracker and the call-model audit fill and drain as in
production.

The start is read after the warm-up once no call is live, the end once every call of the run has
ended and :data:`SETTLE_S` has passed, so the drift (end - start) compares like with like: what
is left over is what the run leaked, or what a map keeps by design (claims and the audit keep
call ids until their TTL or their limit, see ``bounds`` in ``/status``). Open FDs include the
keep-alive connections of both pools (the simulator's webhook client, the daemon's MTT client):
a few up or down is a pool, not a leak.
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from router.bench import probe
from router.bench.files import CALLER_BASE, callers
from router.bench.load import percentile, wait_quiet
from router.bench.runner import BenchSettings, Rig, bench_rig
from router.simulator import CallOutcome, SimConfig, generated_workplaces
from router.simulator.records import SimCall

SETTLE_S = 1.0
"""After the last call ended, before the end reading: the daemon's last notifications handled."""
QUIET_TIMEOUT_S = 60.0
"""Longest wait for the calls of a run to end (parking window, rings, talk, recording)."""
ROUTE_LENGTH = 2
"""Workplaces on the PBX's own route of each number (released and unanswered calls ring them)."""
UNKNOWN_CALLERS = 1000

ANSWERED, RELEASED, UNANSWERED = "answered", "released", "unanswered"


@dataclass(frozen=True)
class SoakSettings:
    """The daemon and the rate come from ``bench``; the call timings and sampling from here."""

    bench: BenchSettings = field(
        default_factory=lambda: BenchSettings(rate=20.0, duration_s=300.0, talk_ms=2000.0)
    )
    sample_every_s: float = 10.0
    answer_after_ms: float = 200.0
    ring_timeout_ms: float = 1000.0
    record_delay_ms: float = 50.0

    def sim_config(self) -> SimConfig:
        """The simulator: generated workplaces, the last :data:`ROUTE_LENGTH` on every number's
        route, whole lifecycles notified."""
        b = self.bench
        workplaces = generated_workplaces(b.workplaces)
        route = workplaces[-ROUTE_LENGTH:]
        numbers = SimConfig().numbers
        return SimConfig(
            workplaces=workplaces,
            routes=dict.fromkeys(numbers, route),
            answer_after_ms=self.answer_after_ms,
            ring_timeout_ms=self.ring_timeout_ms,
            talk_ms=b.talk_ms,
            record_delay_ms=self.record_delay_ms,
            call_log_size=max(10_000, round(b.rate * 120)),
            request_log_size=1000,
            seed=1,
        )


class CallMix:
    """Who calls and who answers, for the ``i``-th call of a run (eight in ten answered)."""

    def __init__(self, config: SimConfig, n_callers: int) -> None:
        self.known = callers(n_callers)
        self.unknown = [str(CALLER_BASE + 10_000_000 + i) for i in range(UNKNOWN_CALLERS)]
        self.workplaces = config.workplaces
        self.callee = config.numbers[0]
        self.route = tuple(config.routes.get(self.callee, config.workplaces))

    def call(self, i: int) -> tuple[str, str, Mapping[str, float | None] | None]:
        """``(kind, caller, answer overrides)`` of call ``i``."""
        slot = i % 10
        if slot == 8:
            return RELEASED, self.unknown[i % len(self.unknown)], None
        index = i % len(self.known)
        if slot == 9:
            # bench rules: caller k's manager is at workplace k mod the number of workplaces
            own = self.workplaces[index % len(self.workplaces)]
            return UNANSWERED, self.known[index], dict.fromkeys((own, *self.route))
        return ANSWERED, self.known[index], None


@dataclass
class Tally:
    """What became of the calls of a run, counted as each one ends."""

    placed: Counter[str] = field(default_factory=Counter)
    outcomes: Counter[str] = field(default_factory=Counter)
    connected: int = 0
    not_ended: int = 0
    """Calls still live when the run gave up waiting (:data:`QUIET_TIMEOUT_S`)."""
    webhook_errors: int = 0
    violations: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    pending: list[SimCall] = field(default_factory=list)

    def sweep(self, *, all_calls: bool = False) -> None:
        """Count the calls that ended (``all_calls``: every call, ended or not) and forget them."""
        keep: list[SimCall] = []
        for call in self.pending:
            if call.done_at is None and not all_calls:
                keep.append(call)
                continue
            self.outcomes[str(call.outcome)] += 1
            self.connected += call.connected_at is not None
            self.not_ended += call.done_at is None
            self.webhook_errors += sum(1 for n in call.notifications if n.status != 200)
            self.violations += len(call.violations)
            if (lat := call.decision_latency_s) is not None and not call.late:
                self.latencies_ms.append(lat * 1000.0)
        self.pending = keep

    def to_json(self) -> dict[str, Any]:
        """Counts and decision latency percentiles (ms, at the simulator)."""
        lat = sorted(self.latencies_ms)
        sent = sum(self.placed.values())
        routed = self.outcomes[CallOutcome.TRANSFERRED] + self.outcomes[CallOutcome.TERMINATED]
        return {
            "sent": sent,
            "by_kind": dict(self.placed),
            "routed": routed,
            "missed": sent - routed,
            "outcomes": dict(self.outcomes),
            "connected": self.connected,
            "not_ended": self.not_ended,
            "webhook_errors": self.webhook_errors,
            "violations": self.violations,
            "p50_ms": _ms(percentile(lat, 50)),
            "p99_ms": _ms(percentile(lat, 99)),
            "max_ms": _ms(lat[-1] if lat else None),
        }


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


class Soak:
    """Drives one rig: calls at a steady rate, readings of the daemon on a timer."""

    def __init__(self, rig: Rig, settings: SoakSettings) -> None:
        self.rig = rig
        self.settings = settings
        self.mix = CallMix(rig.sim.config, settings.bench.callers)
        self.t0 = time.monotonic()
        self._next = 0

    async def vitals(self, **extra: Any) -> probe.Vitals:
        """Read the daemon now (``at_s`` from the soak's start)."""
        d = self.rig.daemon
        live = self.rig.sim.engine.live_calls()
        at = time.monotonic() - self.t0
        return await probe.read(self.rig.http, d.admin_url, d.pid, at, live_calls=live, **extra)

    async def quiet(self) -> bool:
        """Until no call is live in the simulator; False if some still were at the timeout."""
        return await wait_quiet(self.rig.sim, QUIET_TIMEOUT_S)

    async def drive(
        self,
        duration_s: float,
        *,
        sample_every_s: float | None = None,
        on_sample: Callable[[probe.Vitals], None] | None = None,
    ) -> tuple[Tally, list[probe.Vitals]]:
        """Place ``rate * duration_s`` calls at the rate, reading the daemon every
        ``sample_every_s``; wait for the calls to end and count them."""
        tally, samples = Tally(), list[probe.Vitals]()
        sampler = None
        if sample_every_s:
            sampler = asyncio.create_task(self._sample(tally, sample_every_s, samples, on_sample))
        try:
            await self._place(tally, max(1, round(self.settings.bench.rate * duration_s)))
        finally:
            if sampler is not None:
                sampler.cancel()
                await asyncio.gather(sampler, return_exceptions=True)
        await self.quiet()
        tally.sweep(all_calls=True)
        return tally, samples

    async def _place(self, tally: Tally, count: int) -> None:
        loop, rate, sim = asyncio.get_running_loop(), self.settings.bench.rate, self.rig.sim
        start, placed = loop.time(), 0
        while placed < count:
            due = min(count, int((loop.time() - start) * rate) + 1)
            while placed < due:
                kind, caller, answer = self.mix.call(self._next)
                self._next += 1
                tally.pending.append(sim.start_call(caller, self.mix.callee, answer=answer))
                tally.placed[kind] += 1
                placed += 1
            if placed < count:
                await asyncio.sleep(max(0.0, start + placed / rate - loop.time()))

    async def _sample(
        self,
        tally: Tally,
        every_s: float,
        samples: list[probe.Vitals],
        on_sample: Callable[[probe.Vitals], None] | None,
    ) -> None:
        while True:
            await asyncio.sleep(every_s)
            tally.sweep()
            reading = await self.vitals(placed=sum(tally.placed.values()))
            samples.append(reading)
            if on_sample is not None:
                on_sample(reading)


@dataclass
class SoakReport:
    """Settings, the calls, the readings at start and end, the drift and the samples."""

    settings: dict[str, Any]
    daemon: dict[str, Any]
    calls: dict[str, Any]
    start: probe.Vitals
    end: probe.Vitals
    samples: list[probe.Vitals]

    def to_json(self) -> dict[str, Any]:
        """Plain JSON for ``--json``."""
        readings = [self.start, *self.samples, self.end]
        return {
            "mode": "soak",
            "settings": self.settings,
            "daemon": self.daemon,
            "calls": self.calls,
            "start": self.start.to_json(),
            "end": self.end.to_json(),
            "drift": probe.drift(self.start, self.end),
            "peak": probe.peak(readings),
            "samples": [s.to_json() for s in self.samples],
        }

    def text(self) -> str:
        """The human-readable summary."""
        c, s = self.calls, self.settings
        kinds = ", ".join(f"{n} {k}" for k, n in c["by_kind"].items())
        readings = [self.start, *self.samples, self.end]
        columns = [
            ("start", self.start.flat()),
            ("end", self.end.flat()),
            ("drift", probe.drift(self.start, self.end)),
            ("peak", probe.peak(readings)),
        ]
        return "\n".join(
            [
                f"soak: {s['rate']:g} calls/s for {s['duration_s']:g} s: {c['sent']} calls "
                f"({kinds})",
                f"routed {c['routed']}/{c['sent']}, missed {c['missed']}, connected "
                f"{c['connected']}, decision p50 {c['p50_ms']} ms p99 {c['p99_ms']} ms, "
                f"hook errors {c['webhook_errors']}, violations {c['violations']}"
                + (f", {c['not_ended']} calls NOT ENDED" if c["not_ended"] else ""),
                f"start after {s['warmup_s']:g} s warm-up; end {SETTLE_S:g} s after the last "
                f"call ended ({self.end.at_s:.0f} s in)",
                probe.table(columns, probe.maxima(readings), signed=("drift",)),
            ]
        )


async def run_soak(
    settings: SoakSettings, progress: Callable[[str], None] | None = None
) -> SoakReport:
    """Warm up, read the start, drive ``duration_s`` with readings, read the end."""
    say = progress or (lambda _line: None)
    b = settings.bench

    def on_sample(v: probe.Vitals) -> None:
        say(
            f"{v.at_s:6.0f} s: rss {v.rss_mb} MB, fds {v.fds} (TCP in/out {v.conns}), "
            f"tasks {_na(v.tasks)}, live calls {v.extra.get('live_calls')}, maps {_sizes(v)}"
        )

    async with bench_rig(b, settings.sim_config()) as rig:
        soak = Soak(rig, settings)
        if b.warmup_s > 0:
            say(f"warm-up: {b.rate:g} calls/s for {b.warmup_s:g} s")
            await soak.drive(b.warmup_s)
        gc.collect()
        gc.freeze()  # the bench's own objects so far: never walked again by a collection
        soak.t0 = time.monotonic()
        start = await soak.vitals()
        every = settings.sample_every_s
        say(f"soak: {b.rate:g} calls/s for {b.duration_s:g} s, a reading every {every:g} s")
        tally, samples = await soak.drive(
            b.duration_s, sample_every_s=settings.sample_every_s, on_sample=on_sample
        )
        await asyncio.sleep(SETTLE_S)
        end = await soak.vitals()
        gc.unfreeze()
    summary = {k: v for k, v in asdict(b).items() if k in _SETTINGS}
    summary |= {k: v for k, v in asdict(settings).items() if k != "bench"}
    return SoakReport(summary, rig.daemon.describe, tally.to_json(), start, end, samples)


_SETTINGS = ("rate", "duration_s", "warmup_s", "workplaces", "callers", "talk_ms", "log_level")


def _na(value: object) -> str:
    return "n/a" if value is None else str(value)


def _sizes(v: probe.Vitals) -> str:
    if v.bounds is None:
        return "n/a"
    return " ".join(f"{name}={size}" for name, (size, _) in v.bounds.items())
