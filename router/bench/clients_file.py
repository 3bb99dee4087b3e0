"""``mtt-router bench --clients-file N``: a daemon on an N-row ``clients_file``, under call load.

The daemon starts on rules format 2 whose ``clients_file`` lists only the callers; then an N-row
CSV (the callers first) is renamed onto it, and the watcher reloads it. Reported:

- the load time, from the daemon's ``rules_loaded`` line (``load_s``: the rules and the CSV read
  in a child process, the rules swapped; ``load_cpu_s``: the CPU that took, which a busy machine
  does not stretch), for that first load and every reload after;
- decision latency at the simulator (p50/p99/max) under a steady call rate without a reload, and
  while the CSV is touched again as soon as each reload ends (a reload begins once the file has
  held still for a poll interval, so part of that time is between loads: the calls whose
  ``trying`` went out while a load was running are reported apart, "in a load"). The two
  alternate in :data:`ROUNDS` rounds, so that both see the same machine (others' work on it comes
  and goes: the CPU pressure of each is reported);
- the daemon's RSS with the small CSV, after the big one is loaded, and after the reloads.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any, NamedTuple

import aiohttp

from router.bench import probe, proc
from router.bench.files import CLIENTS_CSV, callers, write_clients_csv
from router.bench.load import percentile, place_calls, wait_quiet
from router.bench.runner import BenchError, BenchSettings, Rig, bench_rig
from router.simulator import CallOutcome
from router.simulator.records import SimCall

RELOAD_TIMEOUT_S = 120.0
METRICS_POLL_S = 0.1
TARGETS = {"load_s": 5.0, "p99_ratio": 2.0, "rss_growth_mb": 300.0}
"""What a million rows must stay within on a 2-core machine."""
RSS_POINTS = ("small_csv", "loaded", "after_reloads")
ROUNDS = 5
"""Rounds of (no reload, reloads): each phase's --duration is split among them."""
PRESSURE = Path("/proc/pressure/cpu")


@dataclass(frozen=True)
class ClientsFileSettings:
    """``bench`` gives the daemon, the rate and each phase's duration; ``rows`` the CSV size."""

    bench: BenchSettings = field(
        default_factory=lambda: BenchSettings(rate=100.0, duration_s=30.0, clients_file=True)
    )
    rows: int = 1_000_000


@dataclass
class Phase:
    """Decision latency of the calls placed in one phase (ms at the simulator)."""

    name: str
    calls: list[SimCall]
    windows: list[tuple[float, float]] = field(default_factory=list)
    """Wall-clock spans of the loads in this phase: calls inside them are also shown apart."""

    @staticmethod
    def _summary(calls: list[SimCall]) -> dict[str, Any]:
        lat = sorted(
            x * 1000.0 for c in calls if (x := c.decision_latency_s) is not None and not c.late
        )
        routed = sum(
            1 for c in calls if c.outcome in (CallOutcome.TRANSFERRED, CallOutcome.TERMINATED)
        )
        return {
            "sent": len(calls),
            "routed": routed,
            "missed": len(calls) - routed,
            "p50_ms": _r(percentile(lat, 50)),
            "p99_ms": _r(percentile(lat, 99)),
            "max_ms": _r(lat[-1] if lat else None),
        }

    def in_load(self) -> list[SimCall]:
        """The calls whose ``trying`` was sent while a load was running."""
        return [
            c
            for c in self.calls
            if (at := c.trying_sent_at_wall) is not None
            and any(a <= at <= b for a, b in self.windows)
        ]

    def to_json(self) -> dict[str, Any]:
        """The phase's numbers (and those of the calls in a load, when there were loads)."""
        out = self._summary(self.calls)
        if self.windows:
            out["in_load"] = self._summary(self.in_load())
        return out


@dataclass
class ClientsFileReport:
    """Everything measured, and how it compares with :data:`TARGETS`."""

    settings: dict[str, Any]
    first_load_s: float | None
    reload_s: list[float]
    reload_cpu_s: list[float]
    rss_mb: dict[str, float | None]
    steady: Phase
    reloading: Phase
    seconds_loading: float
    reloading_s: float
    pressure: dict[str, float | None]
    """CPU pressure (``some``, % of the time a task waited for a CPU) during each phase: the
    machine's other work shows here."""

    def checks(self) -> dict[str, Any]:
        """Each target: the measured value, the limit, and whether it held."""
        loads = [x for x in (self.first_load_s, *self.reload_s) if x is not None]
        base = self.steady.to_json()["p99_ms"]
        during = self.reloading.to_json()
        worst = max(
            (v for v in (during["p99_ms"], during.get("in_load", {}).get("p99_ms")) if v),
            default=None,
        )
        before, after = self.rss_mb.get("small_csv"), self.rss_mb.get("after_reloads")
        values = {
            "load_s": max(loads) if loads else None,
            "p99_ratio": round(worst / base, 2) if worst and base else None,
            "rss_growth_mb": round(after - before, 1) if after and before else None,
        }
        return {
            name: {"value": v, "limit": TARGETS[name], "ok": v is not None and v <= TARGETS[name]}
            for name, v in values.items()
        }

    def to_json(self) -> dict[str, Any]:
        """Plain JSON for ``--json``."""
        return {
            "settings": self.settings,
            "first_load_s": self.first_load_s,
            "reloads": len(self.reload_s),
            "reload_s": self.reload_s,
            "reload_cpu_s": self.reload_cpu_s,
            "seconds_loading": round(self.seconds_loading, 2),
            "reloading_phase_s": round(self.reloading_s, 2),
            "rss_mb": self.rss_mb,
            "cpu_pressure": self.pressure,
            "steady": self.steady.to_json(),
            "during_reloads": self.reloading.to_json(),
            "targets": self.checks(),
        }

    def text(self) -> str:
        """The table."""
        s, d = self.steady.to_json(), self.reloading.to_json()
        i = d.get("in_load", {})
        loads, cpu = sorted(self.reload_s), sorted(self.reload_cpu_s)
        p = self.pressure
        rows = [
            ("rows in clients_file", f"{self.settings['rows']:,}"),
            ("first load (s)", _show(self.first_load_s)),
            ("reloads: count, min/median/max (s)", f"{len(loads)}, " + _spread(loads)),
            ("  CPU of each: min/median/max (s)", _spread(cpu)),
            ("time spent loading in the reload phase",
             f"{self.seconds_loading:.1f} of {self.reloading_s:.1f} s"),
            ("decisions, no reload: sent, p50/p99/max ms",
             f"{s['sent']}, {_show(s['p50_ms'])}/{_show(s['p99_ms'])}/{_show(s['max_ms'])}"),
            ("decisions, reload phase: sent, p50/p99/max ms",
             f"{d['sent']}, {_show(d['p50_ms'])}/{_show(d['p99_ms'])}/{_show(d['max_ms'])}"),
            ("  of them in a load: sent, p50/p99/max ms",
             f"{i.get('sent', 0)}, {_show(i.get('p50_ms'))}/{_show(i.get('p99_ms'))}/"
             f"{_show(i.get('max_ms'))}"),
            ("missed (no reload / reload phase)", f"{s['missed']} / {d['missed']}"),
            ("RSS MB: small CSV, loaded, after reloads",
             ", ".join(_show(self.rss_mb.get(k)) for k in RSS_POINTS)),
            ("CPU pressure % (others' work): no reload, reloads",
             f"{_show(p.get('steady'))}, {_show(p.get('reloading'))}"),
        ]  # fmt: skip
        for name, check in self.checks().items():
            verdict = "ok" if check["ok"] else "OVER"
            rows.append(
                (f"target {name} <= {check['limit']:g}", f"{_show(check['value'])} {verdict}")
            )
        width = max(len(k) for k, _ in rows)
        return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)


def _r(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def _show(value: Any) -> str:
    return "n/a" if value is None else f"{value:g}" if isinstance(value, float) else str(value)


def _spread(values: list[float]) -> str:
    if not values:
        return "n/a"
    return f"{values[0]:g}/{values[len(values) // 2]:g}/{values[-1]:g}"


class Logged(NamedTuple):
    """One ``rules_loaded`` line of the daemon's log."""

    ended: float
    load_s: float
    cpu_s: float | None
    clients: int


def loads_in_log(log: Path) -> list[Logged]:
    """Every ``rules_loaded`` line in the daemon's log."""
    found = []
    try:
        lines = log.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return []
    for line in lines:
        if '"rules_loaded"' not in line:
            continue
        try:
            entry = json.loads(line)
            ended = datetime.fromisoformat(entry["timestamp"].replace("Z", "+00:00")).timestamp()
            cpu = entry.get("load_cpu_s")
            found.append(
                Logged(ended, float(entry["load_s"]), cpu and float(cpu), int(entry["clients"]))
            )
        except (ValueError, KeyError, TypeError):
            continue
    return found


def cpu_pressure() -> float | None:
    """Total microseconds some task waited for a CPU (``/proc/pressure/cpu``), or ``None``."""
    try:
        first = PRESSURE.read_text().splitlines()[0]
    except (OSError, IndexError):
        return None
    for part in first.split():
        if part.startswith("total="):
            return float(part.removeprefix("total="))
    return None


async def reloads_ok(http: aiohttp.ClientSession, admin_url: str) -> float:
    """``mtt_router_rules_reloads_total{result="ok"}`` (0 without an answer)."""
    raw = await probe.fetch(http, f"{admin_url}/metrics")
    for line in (raw or b"").decode("utf-8", "replace").splitlines():
        if line.startswith('mtt_router_rules_reloads_total{result="ok"}'):
            return float(line.split()[-1])
    return 0.0


async def wait_reload(http: aiohttp.ClientSession, admin_url: str, past: float) -> float:
    """Until more than ``past`` reloads succeeded; the new count."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + RELOAD_TIMEOUT_S
    while (count := await reloads_ok(http, admin_url)) <= past:
        if loop.time() > deadline:
            raise BenchError(f"no rules reload within {RELOAD_TIMEOUT_S:g} s")
        await asyncio.sleep(METRICS_POLL_S)
    return count


async def _calls(rig: Rig, settings: BenchSettings, duration_s: float) -> list[SimCall]:
    count = max(1, round(settings.rate * duration_s))
    callee = rig.sim.config.numbers[0]
    calls, _, _ = await place_calls(
        rig.sim, settings.rate, count, callers(settings.callers), callee
    )
    await wait_quiet(rig.sim, rig.sim.config.parking_window_s + 10.0)
    return calls


async def _touch_until(rig: Rig, csv: Path, stop: asyncio.Event) -> None:
    """Touch the CSV, wait for the reload it causes, again, until ``stop``."""
    http, admin = rig.http, rig.daemon.admin_url
    count = await reloads_ok(http, admin)
    while not stop.is_set():
        os.utime(csv)
        count = await wait_reload(http, admin, count)


class _Tally:
    """Calls and wall-clock spans of one kind of round, and the CPU pressure over them."""

    def __init__(self) -> None:
        self.calls: list[SimCall] = []
        self.spans: list[tuple[float, float]] = []
        self.waited_us = 0.0
        self.pressure_known = True

    async def run(self, work: Awaitable[list[SimCall]]) -> None:
        started, before = time.time(), cpu_pressure()
        self.calls += await work
        ended, after = time.time(), cpu_pressure()
        self.spans.append((started, ended))
        if before is None or after is None:
            self.pressure_known = False
        else:
            self.waited_us += after - before

    def seconds(self) -> float:
        return sum(b - a for a, b in self.spans)

    def pressure(self) -> float | None:
        seconds = self.seconds()
        if not self.pressure_known or not seconds:
            return None
        return round(100.0 * self.waited_us / 1e6 / seconds, 1)


async def _reloading(rig: Rig, settings: BenchSettings, csv: Path, seconds: float) -> list[SimCall]:
    """Calls for ``seconds`` while the CSV is touched after every reload; the last reload ends
    before this returns."""
    stop = asyncio.Event()
    toucher = asyncio.create_task(_touch_until(rig, csv, stop))
    try:
        return await _calls(rig, settings, seconds)
    finally:
        stop.set()
        await asyncio.wait_for(toucher, RELOAD_TIMEOUT_S)


async def run_clients_file(
    settings: ClientsFileSettings, progress: Callable[[str], None] | None = None
) -> ClientsFileReport:
    """Start the rig on a small CSV, load the big one, then the rounds."""
    say = progress or (lambda _line: None)
    phase_s = settings.bench.duration_s
    b = replace(settings.bench, clients_file=True, duration_s=phase_s * 2)
    async with bench_rig(b, b.sim_config()) as rig:
        files, pid = rig.daemon.files, rig.daemon.pid
        if files is None or pid is None:
            raise BenchError("--clients-file needs the daemon started here (not --daemon-url)")
        csv = files.rules.parent / CLIENTS_CSV
        if b.warmup_s > 0:
            say(f"warm-up: {b.rate:g} calls/s for {b.warmup_s:g} s")
            await _calls(rig, b, b.warmup_s)
        rss: dict[str, float | None] = {"small_csv": _mb(proc.rss_bytes(pid))}
        say(f"writing {settings.rows:,} rows")
        big = csv.with_name("clients.big.csv")
        await asyncio.to_thread(write_clients_csv, big, settings.rows, b.workplaces)
        count = await reloads_ok(rig.http, rig.daemon.admin_url)
        os.replace(big, csv)
        await wait_reload(rig.http, rig.daemon.admin_url, count)
        first = loads_in_log(files.log)[-1]
        if first.clients < settings.rows:
            raise BenchError(f"the daemon loaded {first.clients} clients, not {settings.rows}")
        rss["loaded"] = _mb(proc.rss_bytes(pid))
        each = phase_s / ROUNDS
        say(f"loaded in {first.load_s:g} s; {ROUNDS} rounds: {each:g} s without reloads, then")
        say(f"{each:g} s while the CSV is touched after every reload")
        steady, reloading = _Tally(), _Tally()
        for i in range(ROUNDS):
            await steady.run(_calls(rig, b, each))
            await reloading.run(_reloading(rig, b, csv, each))
            say(f"round {i + 1}/{ROUNDS} done")
        rss["after_reloads"] = _mb(proc.rss_bytes(pid))
        logged = loads_in_log(files.log)  # before the rig's work directory goes
    loads = [x for x in logged if any(a <= x.ended <= b_ + 1 for a, b_ in reloading.spans)]
    windows = [(x.ended - x.load_s, x.ended) for x in loads]
    spent = sum(
        max(0.0, min(w1, b_) - max(w0, a)) for w0, w1 in windows for a, b_ in reloading.spans
    )
    return ClientsFileReport(
        settings={"rows": settings.rows, "rate": b.rate, "phase_s": phase_s, "rounds": ROUNDS,
                  "workplaces": b.workplaces, "callers": b.callers, "loop": b.daemon_loop},
        first_load_s=first.load_s,
        reload_s=[x.load_s for x in loads],
        reload_cpu_s=[x.cpu_s for x in loads if x.cpu_s is not None],
        rss_mb=rss,
        steady=Phase("steady", steady.calls),
        reloading=Phase("reloading", reloading.calls, windows),
        seconds_loading=spent,
        reloading_s=reloading.seconds(),
        pressure={"steady": steady.pressure(), "reloading": reloading.pressure()},
    )  # fmt: skip


def _mb(value: int | None) -> float | None:
    return None if value is None else round(value / 2**20, 1)
