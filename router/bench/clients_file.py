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
  and goes: the CPU pressure of each is reported). With ``control``, a third kind of round:
  another process does the same load (the daemon's load worker on the same files) while the
  daemon does none, which tells what that CPU work costs decisions on this machine by itself;
- the daemon's RSS with the small CSV, after the big one is loaded, and after the reloads.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import aiohttp

from router.bench import probe, proc
from router.bench.clients_report import ClientsFileReport, Phase, Tally, loads_in_log
from router.bench.files import CLIENTS_CSV, callers, write_clients_csv
from router.bench.load import place_calls, wait_quiet
from router.bench.runner import BenchError, BenchSettings, Rig, bench_rig
from router.rules.load_worker import Job, dumps
from router.simulator.records import SimCall

RELOAD_TIMEOUT_S = 120.0
METRICS_POLL_S = 0.1
ROUNDS = 5
"""Rounds of (no reload, reloads): each phase's --duration is split among them."""


@dataclass(frozen=True)
class ClientsFileSettings:
    """``bench`` gives the daemon, the rate and each phase's duration; ``rows`` the CSV size."""

    bench: BenchSettings = field(
        default_factory=lambda: BenchSettings(rate=100.0, duration_s=30.0, clients_file=True)
    )
    rows: int = 1_000_000
    control: bool = False
    """Add rounds in which another process does the same load (see the module's docstring)."""


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


async def _elsewhere(rig: Rig, settings: BenchSettings, rules: Path, seconds: float) -> Phase:
    """Calls for ``seconds`` while another process loads ``rules`` again and again, a poll
    interval apart (as the watcher's reloads are); the phase knows when each load ran."""
    job, stop, windows = dumps(Job(str(rules), path=str(rules))), asyncio.Event(), []

    async def loads() -> None:
        while not stop.is_set():
            started = time.time()
            child = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "router.rules.load_worker", stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
            )  # fmt: skip
            await child.communicate(job)
            windows.append((started, time.time()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)

    loader = asyncio.create_task(loads())
    try:
        calls = await _calls(rig, settings, seconds)
    finally:
        stop.set()
        await asyncio.wait_for(loader, RELOAD_TIMEOUT_S)
    return Phase("control", calls, windows)


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
        steady, reloading, control = Tally(), Tally(), Tally()
        elsewhere: list[Phase] = []
        for i in range(ROUNDS):
            await steady.run(_calls(rig, b, each))
            await reloading.run(_reloading(rig, b, csv, each))
            if settings.control:
                elsewhere.append(await _measured(control, _elsewhere(rig, b, files.rules, each)))
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
        pressure={"steady": steady.pressure(), "reloading": reloading.pressure(),
                  "control": control.pressure() if settings.control else None},
        control=Phase("control", [c for p in elsewhere for c in p.calls],
                      [w for p in elsewhere for w in p.windows]) if settings.control else None,
    )  # fmt: skip


async def _measured(tally: Tally, work: Awaitable[Phase]) -> Phase:
    """Run ``work`` as one round of ``tally`` (its calls, span and CPU pressure counted)."""
    phase: list[Phase] = []

    async def calls() -> list[SimCall]:
        phase.append(await work)
        return phase[0].calls

    await tally.run(calls())
    return phase[0]


def _mb(value: int | None) -> float | None:
    return None if value is None else round(value / 2**20, 1)
