"""One measured run: place calls on the simulator at a fixed rate, wait for their lifecycles to
end, and summarise what the simulator saw and what the daemon's process spent.

Latency is MTT's view (:attr:`router.simulator.SimCall.decision_latency_s`): from the moment
``trying`` was sent to the moment the transferCall/terminateCall arrived.
"""

from __future__ import annotations

import asyncio
import gc
import math
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from router.bench import proc
from router.bench.redis_probe import RedisProbe, use_between
from router.simulator import CallOutcome, Simulator
from router.simulator.records import SimCall

SETTLE_POLL_S = 0.02


@dataclass(frozen=True)
class RunResult:
    """What one run measured. Latencies in ms; ``None`` where nothing could be measured."""

    rate: float
    """Calls per second asked for."""
    achieved_rate: float
    """Calls per second actually placed (the generator keeping up, or not)."""
    sent: int
    routed: int
    """Calls that got the daemon's transferCall or terminateCall inside the parking window."""
    transferred: int
    terminated: int
    missed: int
    """Calls that got no command inside the window (the PBX routed them; late commands too)."""
    in_window_pct: float
    """Routed calls in percent of those sent: decided inside the parking window."""
    lifecycle_complete: int
    """Calls whose every notification (trying .. recorded) the daemon answered with 200."""
    webhook_errors: int
    """Notifications the daemon did not answer with 200 (connection errors included)."""
    p50_ms: float | None
    p90_ms: float | None
    p99_ms: float | None
    max_ms: float | None
    daemon_cpu_s: float | None
    daemon_cpu_ms_per_call: float | None
    """Daemon CPU over the whole window (calls placed to last notification answered) / routed."""
    daemon_rss_mb: float | None
    sim_cpu_ms_per_call: float | None
    """The bench's own process (simulator and generator) CPU per call: its headroom."""
    generator_lag_ms_max: float
    """How far behind schedule the generator placed a call at worst."""
    window_s: float
    load1: float
    """The machine's 1-minute load average when the run started (others' work shows here)."""
    redis_cpu_ms_per_call: float | None = None
    """With Redis storage: the Redis server's CPU over the window / routed."""
    redis_cmds_per_call: float | None = None
    """Redis commands (``INFO commandstats``, those inside scripts included) / routed."""
    redis_trips_per_call: float | None = None
    """Redis read events (``total_reads_processed``: round trips, near enough) / routed."""
    redis_commands: dict[str, float] | None = None
    """Each Redis command's calls / routed."""

    def to_json(self) -> dict[str, Any]:
        """Plain JSON."""
        return asdict(self)


def percentile(sorted_values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (nearest rank) of already sorted values."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(q / 100.0 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def _own_cpu_s() -> float:
    return time.process_time()


async def place_calls(
    sim: Simulator, rate: float, count: int, caller_numbers: Sequence[str], callee: str
) -> tuple[list[SimCall], float, float]:
    """Start ``count`` calls at ``rate`` per second; return them, the seconds taken and the worst
    lag behind schedule (s). Calls due while the loop was busy are placed at once (no skipping)."""
    loop = asyncio.get_running_loop()
    calls: list[SimCall] = []
    start = loop.time()
    lag = 0.0
    n_callers = len(caller_numbers)
    i = 0
    while i < count:
        now = loop.time()
        due = min(count, int((now - start) * rate) + 1)
        if due > i:
            lag = max(lag, now - (start + i / rate))
        while i < due:
            calls.append(sim.start_call(caller_numbers[i % n_callers], callee))
            i += 1
        if i < count:
            await asyncio.sleep(max(0.0, start + i / rate - loop.time()))
    return calls, loop.time() - start, lag


async def wait_quiet(sim: Simulator, timeout_s: float) -> bool:
    """Until no call is live in the simulator (every lifecycle ended); False on timeout."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while sim.engine.live_calls():
        if loop.time() >= deadline:
            return False
        await asyncio.sleep(SETTLE_POLL_S)
    return True


def _complete(call: SimCall) -> bool:
    return bool(call.notifications) and all(n.status == 200 for n in call.notifications)


async def measure(
    sim: Simulator,
    *,
    rate: float,
    duration_s: float,
    caller_numbers: Sequence[str],
    callee: str,
    daemon_pid: int | None,
    settle_timeout_s: float,
    redis: RedisProbe | None = None,
) -> RunResult:
    """Place ``rate * duration_s`` calls, wait until all are over, return the numbers (with
    ``redis``, what that Redis spent over the same window)."""
    count = max(1, round(rate * duration_s))
    load1 = os.getloadavg()[0]
    # The simulator keeps every call's record: a full collection over them would stall the
    # load generator for tens of milliseconds mid-run. Records are freed by refcount anyway.
    gc.collect()
    gc.freeze()
    gc.disable()
    try:
        result = await _measure(
            sim, rate, count, caller_numbers, callee, daemon_pid, settle_timeout_s, load1, redis
        )
    finally:
        gc.enable()
        gc.unfreeze()
    return result


async def _measure(
    sim: Simulator,
    rate: float,
    count: int,
    caller_numbers: Sequence[str],
    callee: str,
    daemon_pid: int | None,
    settle_timeout_s: float,
    load1: float,
    redis: RedisProbe | None,
) -> RunResult:
    redis0 = await redis.sample() if redis is not None else None
    cpu0 = proc.cpu_seconds(daemon_pid) if daemon_pid else None
    own0 = _own_cpu_s()
    t0 = time.monotonic()
    calls, placing_s, lag_s = await place_calls(sim, rate, count, caller_numbers, callee)
    await wait_quiet(sim, settle_timeout_s)
    window_s = time.monotonic() - t0
    cpu1 = proc.cpu_seconds(daemon_pid) if daemon_pid else None
    own1 = _own_cpu_s()
    rss = proc.rss_bytes(daemon_pid) if daemon_pid else None
    redis1 = await redis.sample() if redis is not None else None

    latencies = sorted(
        lat * 1000.0 for c in calls if (lat := c.decision_latency_s) is not None and not c.late
    )
    transferred = sum(1 for c in calls if c.outcome is CallOutcome.TRANSFERRED)
    terminated = sum(1 for c in calls if c.outcome is CallOutcome.TERMINATED)
    routed = transferred + terminated
    errors = sum(1 for c in calls for n in c.notifications if n.status != 200)
    cpu_s = None if cpu0 is None or cpu1 is None else cpu1 - cpu0
    used = None if redis0 is None or redis1 is None else use_between(redis0, redis1, routed)
    return RunResult(
        rate=rate,
        achieved_rate=round(count / placing_s, 1) if placing_s > 0 else float(count),
        sent=count,
        routed=routed,
        transferred=transferred,
        terminated=terminated,
        missed=count - routed,
        in_window_pct=round(100.0 * routed / count, 2),
        lifecycle_complete=sum(1 for c in calls if _complete(c)),
        webhook_errors=errors,
        p50_ms=_round(percentile(latencies, 50)),
        p90_ms=_round(percentile(latencies, 90)),
        p99_ms=_round(percentile(latencies, 99)),
        max_ms=_round(latencies[-1] if latencies else None),
        daemon_cpu_s=_round(cpu_s, 3),
        daemon_cpu_ms_per_call=_round(
            cpu_s * 1000.0 / routed if cpu_s is not None and routed else None, 3
        ),
        daemon_rss_mb=_round(rss / 2**20 if rss is not None else None, 1),
        sim_cpu_ms_per_call=_round((own1 - own0) * 1000.0 / count, 3),
        generator_lag_ms_max=round(lag_s * 1000.0, 2),
        window_s=round(window_s, 2),
        load1=round(load1, 2),
        redis_cpu_ms_per_call=None if used is None else used.cpu_ms_per_call,
        redis_cmds_per_call=None if used is None else used.cmds_per_call,
        redis_trips_per_call=None if used is None else used.trips_per_call,
        redis_commands=None if used is None else used.commands,
    )


def _round(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(value, digits)
