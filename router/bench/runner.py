"""Orchestration: the simulator in this process, the daemon in its own, warm-up, repeats.

Two processes on purpose: the daemon's CPU is measured alone, and the load generator (with the
simulator it drives) never competes with it inside one event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import tempfile
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from router import runtime
from router.bench import proc
from router.bench.files import DaemonFiles, callers, write_daemon_files
from router.bench.load import RunResult, measure, wait_quiet
from router.bench.redis_probe import RedisProbe, bench_storage
from router.bench.report import medians
from router.simulator import SimConfig, Simulator, generated_workplaces, serve_simulator

READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
WARMUP_S = 1.0


class BenchError(Exception):
    """The bench could not run (daemon did not start, was not ready, or died)."""


@dataclass(frozen=True)
class BenchSettings:
    """What to run. Durations in seconds, talk and answer times of simulated calls in ms."""

    rate: float = 100.0
    duration_s: float = 10.0
    repeat: int = 1
    workplaces: int = 500
    callers: int = 5000
    log_level: str = "info"
    talk_ms: float = 20.0
    answer_after_ms: float = 5.0
    record_delay_ms: float = 5.0
    warmup_s: float = WARMUP_S
    daemon_url: str | None = None
    """Events URL of a daemon already running (its MTT URLs must point at ``sim_listen``)."""
    admin_url: str | None = None
    daemon_pid: int | None = None
    daemon_loop: str = "auto"
    """``MTT_ROUTER_LOOP`` for the daemon subprocess: auto (uvloop when installed), asyncio."""
    sim_listen: tuple[str, int] = ("127.0.0.1", 0)
    workdir: Path | None = None
    capture: bool = False
    """``log.capture`` on in the daemon started here (what capturing costs)."""
    max_inflight: int | None = None
    """``server.max_inflight`` of the daemon started here (``None``: the daemon's default)."""
    clients_file: bool = False
    """The daemon started here has its callers in a ``clients_file`` (rules format 2)."""
    storage: str = "memory"
    """The daemon's storage: ``memory``, ``redis`` (a throwaway redis-server started here) or a
    Redis URL; with Redis each run also reports what Redis spent (:mod:`router.bench.redis_probe`).
    """

    def sim_config(self) -> SimConfig:
        """The simulator: generated workplaces, short calls, the full lifecycle notified."""
        total = round(self.rate * (self.duration_s * self.repeat + self.warmup_s)) + 1000
        return SimConfig(
            workplaces=generated_workplaces(self.workplaces),
            answer_after_ms=self.answer_after_ms,
            talk_ms=self.talk_ms,
            record_delay_ms=self.record_delay_ms,
            ring_timeout_ms=1000.0,
            call_log_size=max(100_000, total),
            request_log_size=1000,
            seed=1,
        )


@dataclass
class BenchReport:
    """Settings, every measured run, and the medians the headline quotes."""

    settings: dict[str, Any]
    runs: list[RunResult]
    median: dict[str, Any]
    daemon: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        """Plain JSON for ``--json``."""
        return {
            "settings": self.settings,
            "daemon": self.daemon,
            "runs": [r.to_json() for r in self.runs],
            "median": self.median,
        }


class DaemonProcess:
    """``python -m router run`` on the bench's files; stopped with SIGTERM like systemd does."""

    def __init__(self, files: DaemonFiles, loop: str = "auto") -> None:
        self.files = files
        self.loop = loop
        self._proc: asyncio.subprocess.Process | None = None

    @property
    def pid(self) -> int | None:
        """The daemon's pid once started."""
        return None if self._proc is None else self._proc.pid

    async def start(self) -> None:
        """Start the daemon; its stdout and stderr go to ``files.log``."""
        with self.files.log.open("ab") as log:
            self._proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "router",
                "run",
                "--config",
                str(self.files.config),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env={**os.environ, runtime.LOOP_ENV: self.loop},
            )

    def exited(self) -> int | None:
        """The exit code if the daemon has stopped."""
        return None if self._proc is None else self._proc.returncode

    async def stop(self) -> int | None:
        """SIGTERM, then SIGKILL if it has not exited within :data:`STOP_TIMEOUT_S`."""
        if self._proc is None or self._proc.returncode is not None:
            return None if self._proc is None else self._proc.returncode
        self._proc.send_signal(signal.SIGTERM)
        try:
            return await asyncio.wait_for(self._proc.wait(), STOP_TIMEOUT_S)
        except TimeoutError:
            self._proc.kill()
            return await self._proc.wait()

    def log_tail(self, lines: int = 20) -> str:
        """The end of the daemon's log, for error messages."""
        try:
            text = self.files.log.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


async def _get_json(http: aiohttp.ClientSession, url: str) -> tuple[int, Any]:
    async with http.get(url, allow_redirects=False) as resp:
        try:
            return resp.status, await resp.json(content_type=None)
        except ValueError:
            return resp.status, None


async def authorise(http: aiohttp.ClientSession, admin_url: str, events_url: str) -> None:
    """The OAuth dance without a browser: /oauth/start -> simulator -> the daemon's callback."""
    async with http.get(f"{admin_url}/oauth/start", allow_redirects=False) as resp:
        authorize = resp.headers.get("Location")
    if not authorize:
        raise BenchError("the daemon's /oauth/start gave no redirect")
    async with http.get(authorize, allow_redirects=False) as resp:
        back = resp.headers.get("Location")
    if not back:
        raise BenchError("the simulator's /oauth/authorize gave no redirect")
    # The redirect_uri may name the public host; the callback is the events URL minus /events.
    callback = events_url.rsplit("/events", 1)[0] or "/"
    query = urlsplit(back).query
    async with http.get(f"{callback}?{query}") as resp:
        if resp.status != 200:
            raise BenchError(f"the daemon refused the OAuth callback: HTTP {resp.status}")


async def wait_ready(
    http: aiohttp.ClientSession,
    admin_url: str,
    workplaces: int,
    *,
    exited: Callable[[], int | None] = lambda: None,
    on_needs_login: Callable[[], Any] | None = None,
) -> None:
    """Until /readyz is 200 and /status lists the simulator's workplaces."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + READY_TIMEOUT_S
    logged_in = False
    last = "no answer"
    while loop.time() < deadline:
        if (code := exited()) is not None:
            raise BenchError(f"the daemon exited with code {code} before it was ready")
        try:
            status, body = await _get_json(http, f"{admin_url}/readyz")
            if status == 200:
                _, info = await _get_json(http, f"{admin_url}/status")
                known = (info or {}).get("directory", {}).get("workplaces") or []
                if len(known) >= workplaces:
                    return
                last = f"knows {len(known)} of {workplaces} workplaces"
            else:
                last = f"/readyz {status}: {body}"
                token = ((body or {}).get("checks") or {}).get("token", "")
                if token != "ok" and on_needs_login is not None and not logged_in:
                    logged_in = True
                    await on_needs_login()
        except aiohttp.ClientError as exc:
            last = f"{type(exc).__name__}"
        await asyncio.sleep(0.1)
    raise BenchError(f"the daemon was not ready within {READY_TIMEOUT_S:g} s ({last})")


@dataclass(frozen=True)
class Daemon:
    """A ready daemon under test: where it listens, its pid, how it was started."""

    events_url: str
    admin_url: str
    pid: int | None
    describe: dict[str, Any]
    files: DaemonFiles | None = None
    """Its files, when it was started here."""
    redis: RedisProbe | None = None
    """Its Redis, when the bench measures one."""


@dataclass(frozen=True)
class Rig:
    """The simulator (notifying the daemon), a client session, and the daemon."""

    sim: Simulator
    http: aiohttp.ClientSession
    daemon: Daemon


@contextlib.asynccontextmanager
async def bench_rig(settings: BenchSettings, config: SimConfig) -> AsyncIterator[Rig]:
    """Serve a simulator with ``config``, start (or reach) the daemon, point the one at the
    other; everything is stopped on exit."""
    host, port = settings.sim_listen
    timeout = aiohttp.ClientTimeout(total=10)
    async with (
        serve_simulator(config, host=host, port=port) as sim,
        aiohttp.ClientSession(timeout=timeout) as http,
        _daemon(settings, sim, http) as daemon,
    ):
        sim.webhook_url = daemon.events_url
        yield Rig(sim, http, daemon)


@contextlib.asynccontextmanager
async def _daemon(
    settings: BenchSettings, sim: Simulator, http: aiohttp.ClientSession
) -> AsyncIterator[Daemon]:
    """A ready daemon: ours, or the one given."""
    if settings.daemon_url is not None:
        admin = (settings.admin_url or "http://127.0.0.1:9100").rstrip("/")
        events = settings.daemon_url
        await wait_ready(
            http,
            admin,
            settings.workplaces,
            on_needs_login=lambda: authorise(http, admin, events),
        )
        port = urlsplit(events).port or 80
        pid = settings.daemon_pid or proc.pid_listening_on(port)
        async with bench_storage(settings.storage, probe_only=True) as storage:
            describe = {"mode": "external", "events_url": events, "pid": pid}
            describe |= storage.describe()
            yield Daemon(events, admin, pid, describe, redis=storage.probe)
        return
    async with contextlib.AsyncExitStack() as stack:
        if settings.workdir is not None:
            workdir = settings.workdir
        else:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="mtt-bench-")))
        storage = await stack.enter_async_context(bench_storage(settings.storage, workdir))
        tokens = sim.issue_tokens()
        await storage.seed_tokens(tokens)
        files = write_daemon_files(
            workdir,
            sim_url=sim.url,
            public=f"127.0.0.1:{proc.free_port()}",
            admin=f"127.0.0.1:{proc.free_port()}",
            workplaces=sim.config.workplaces,
            caller_numbers=callers(settings.callers),
            tokens=tokens,
            log_level=settings.log_level,
            capture=settings.capture,
            max_inflight=settings.max_inflight,
            clients_file=settings.clients_file,
            storage=storage.url,
            storage_prefix=storage.prefix,
        )
        daemon = DaemonProcess(files, settings.daemon_loop)
        await daemon.start()
        try:
            try:
                await wait_ready(http, files.admin_url, settings.workplaces, exited=daemon.exited)
            except BenchError as exc:
                raise BenchError(f"{exc}\n{daemon.log_tail()}") from None
            describe = {
                "mode": "subprocess",
                "pid": daemon.pid,
                "log_level": settings.log_level,
                "loop": settings.daemon_loop,
                "capture": settings.capture,
                "max_inflight": settings.max_inflight,
                **storage.describe(),
            }
            yield Daemon(
                files.events_url, files.admin_url, daemon.pid, describe, files, storage.probe
            )
        finally:
            await daemon.stop()


async def run_bench(
    settings: BenchSettings, progress: Callable[[str], None] | None = None
) -> BenchReport:
    """Run warm-up and ``settings.repeat`` measured runs; return every run and the medians."""
    say = progress or (lambda _line: None)
    caller_numbers = callers(settings.callers)
    config = settings.sim_config()
    callee = config.numbers[0]
    settle_s = config.parking_window_s + 5.0
    async with bench_rig(settings, config) as rig:
        sim, pid, redis = rig.sim, rig.daemon.pid, rig.daemon.redis
        if settings.warmup_s > 0:
            warm = replace(settings, duration_s=settings.warmup_s)
            say(f"warm-up: {warm.rate:g} calls/s for {warm.duration_s:g} s")
            await _measure(sim, warm, caller_numbers, callee, pid, settle_s, redis)
        runs: list[RunResult] = []
        for i in range(settings.repeat):
            result = await _measure(sim, settings, caller_numbers, callee, pid, settle_s, redis)
            runs.append(result)
            say(
                f"run {i + 1}/{settings.repeat}: routed {result.routed}/{result.sent}, "
                f"p99 {result.p99_ms} ms, cpu {result.daemon_cpu_ms_per_call} ms/call"
            )
    summary = {k: v for k, v in asdict(settings).items() if k not in ("workdir", "sim_listen")}
    return BenchReport(
        settings=summary, runs=runs, median=medians(runs), daemon=rig.daemon.describe
    )


async def _measure(
    sim: Simulator,
    settings: BenchSettings,
    caller_numbers: list[str],
    callee: str,
    pid: int | None,
    settle_s: float,
    redis: RedisProbe | None = None,
) -> RunResult:
    await wait_quiet(sim, settle_s)
    return await measure(
        sim,
        rate=settings.rate,
        duration_s=settings.duration_s,
        caller_numbers=caller_numbers,
        callee=callee,
        daemon_pid=pid,
        settle_timeout_s=settle_s,
        redis=redis,
    )
