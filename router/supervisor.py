"""``server.workers: N``: N daemon processes under one supervisor (this process).

Each worker is ``mtt-router run --worker I`` (:mod:`router.worker`): a whole daemon whose public
listener shares ``server.listen`` with the others (``SO_REUSEPORT``: the kernel spreads new
connections over the workers that are listening) and whose admin listener is ``admin_listen``'s
port + I. Workers share nothing in memory: claims, tokens, presence, the directory and the rules
go through Redis exactly as between replicas on separate hosts, which is why N > 1 needs a Redis
storage (:func:`router.config.workers_problems`). What each worker runs at start (the directory
fetch and ``setParkingNumbers``, idempotent; the token refresh, under the Redis lock with a
compare-and-set) is what N replicas already run; no job needs a single owner on the host.

The supervisor:

- listens on ``admin_listen`` itself (:mod:`router.supervisor_admin`: /healthz and /readyz for
  the set, /workers), then starts the workers;
- restarts a worker that dies: after :data:`RESTART_DELAY_S`, doubled for each death in a row
  within :data:`FAST_DEATH_S` of its start; the :data:`GIVE_UP_AFTER`-th such death stops every
  worker and exits 1 with one ``workers_failing`` line (a worker exiting 2, an invalid config,
  stops them at once and exits 2: restarting cannot fix it);
- forwards SIGTERM/SIGINT (graceful stop: each worker drains) and waits for every worker, at
  most :func:`stop_wait_s`, then SIGKILLs what is left; exits 0 when every worker exited 0;
- forwards SIGHUP (rules and reloadable config in every worker);
- logs what each worker did with its index (``worker``) and ``pid``; workers' own lines carry
  the same two fields.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import structlog
from aiohttp import web

from router.config import Config
from router.errors import ListenError
from router.exits import Exit
from router.worker import worker_admin

log = structlog.get_logger("router.supervisor")

FAST_DEATH_S = 10.0
"""A worker dying this soon after its start died "at once": its next start waits longer."""
GIVE_UP_AFTER = 3
"""Fast deaths in a row of one worker after which the supervisor stops everything (exit 1)."""
RESTART_DELAY_S = 0.5
"""Wait before restarting a worker that ran a while; doubled per fast death in a row."""
REAP_POLL_S = 1.0
"""Dead children are reaped on SIGCHLD; this often as well, should a signal be missed."""

WORKER_BLOCKED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
"""Blocked in a worker from its start until its daemon handles them."""

State = Literal["running", "restarting", "stopped"]


def stop_wait_s(config: Config) -> float:
    """How long a stop waits for the workers: their drain (a rules reload in flight, 2 s, then the
    decisions in flight, the budget + 0.5 s) and some slack for closing."""
    return 2.0 + config.routing.decision_budget_ms / 1000 + 0.5 + 4.0


def describe(status: int) -> str:
    """``exit 1`` or ``signal SIGKILL`` from a wait status."""
    code = os.waitstatus_to_exitcode(status)
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"exit {code}"


@dataclass
class Slot:
    """One worker index and the process (if any) that holds it now."""

    index: int
    pid: int | None = None
    state: State = "running"
    started_at: float = 0.0
    """Monotonic time of the current process's start."""
    started_wall: float = 0.0
    starts: int = 0
    fast_deaths: int = 0
    last_exit: str | None = None
    seen_up: bool = False
    """Its admin listener answered since this process started (set by the supervisor's
    /healthz and /readyz): before that it is starting, after that it is expected to answer."""
    restart: asyncio.TimerHandle | None = field(default=None, repr=False)

    def view(self) -> dict[str, Any]:
        """What ``/workers`` shows of it."""
        return {
            "worker": self.index,
            "pid": self.pid,
            "state": self.state,
            "answered": self.seen_up,
            "started_at": self.started_wall or None,
            "restarts": max(self.starts - 1, 0),
            "last_exit": self.last_exit,
        }


class Supervisor:
    """Starts, watches, restarts and stops ``workers`` daemon processes."""

    def __init__(self, config: Config, config_path: str, workers: int) -> None:
        self.config = config
        self.config_path = config_path
        self.slots = [Slot(i) for i in range(1, workers + 1)]
        self.exit_code: int | None = None
        """Set when the supervisor decided to stop on its own (a worker failing)."""
        self._stop = asyncio.Event()
        self._child = asyncio.Event()
        self._stopping = False
        self._by_pid: dict[int, Slot] = {}
        self._stop_codes: dict[int, int] = {}

    def admin_url(self, slot: Slot) -> str:
        """Base URL of a worker's admin listener, as this host reaches it."""
        address = worker_admin(self.config.server.admin_listen, slot.index)
        host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(
            address.host, address.host
        )
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{address.port}"

    def argv(self, slot: Slot) -> list[str]:
        """The worker's command line: this Python, this package."""
        return [
            sys.executable,
            "-m",
            "router",
            "run",
            "--config",
            self.config_path,
            "--worker",
            str(slot.index),
            "--supervisor-pid",
            str(os.getpid()),
        ]

    def _spawn(self, slot: Slot) -> None:
        slot.restart = None
        if self._stopping:
            return
        # posix_spawn, not fork: nothing of this process's loop or sockets goes with it (no fd
        # is inheritable); the signals Python ignores are given back their default. The stop and
        # reload signals start blocked: one forwarded while the worker is still importing waits
        # until its daemon has its handlers (router/daemon.py unblocks them), never killing it.
        try:
            pid = os.posix_spawn(
                sys.executable,
                self.argv(slot),
                os.environ,
                setsigdef=(signal.SIGPIPE, signal.SIGXFSZ),
                setsigmask=WORKER_BLOCKED,
            )
        except OSError as exc:  # no process to be had (EAGAIN, ENOMEM): a death at once
            log.error("worker_spawn_failed", worker=slot.index, error=str(exc))
            slot.pid, slot.last_exit = None, f"not started: {exc.strerror or exc}"
            self._again(slot, None, slot.last_exit, fast=True)
            return
        slot.pid, slot.state, slot.seen_up = pid, "running", False
        slot.started_at, slot.started_wall = time.monotonic(), time.time()
        slot.starts += 1
        self._by_pid[pid] = slot
        log.info("worker_started", worker=slot.index, pid=pid, start=slot.starts)

    def _reap(self) -> None:
        """Every child that ended, handled; keeps going until none is left to reap."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            slot = self._by_pid.pop(pid, None)
            if slot is None:
                continue  # an orphan handed to us (when we are PID 1 in a container)
            self._ended(slot, pid, status)

    def _ended(self, slot: Slot, pid: int, status: int) -> None:
        ran_s = time.monotonic() - slot.started_at
        how = describe(status)
        slot.pid, slot.last_exit = None, how
        if self._stop.is_set():  # stopping, or giving up: no restart
            slot.state = "stopped"
            self._stop_codes[slot.index] = os.waitstatus_to_exitcode(status)
            log.info("worker_stopped", worker=slot.index, pid=pid, exit=how)
            return
        log.warning("worker_exited", worker=slot.index, pid=pid, exit=how, ran_s=round(ran_s, 1))
        if os.waitstatus_to_exitcode(status) == Exit.USAGE:
            log.error(
                "workers_failing",
                worker=slot.index,
                pid=pid,
                exit=how,
                hint="the config is invalid now: fix it, then start again",
            )
            self._give_up(Exit.USAGE)
            return
        self._again(slot, pid, how, fast=ran_s < FAST_DEATH_S)

    def _again(self, slot: Slot, pid: int | None, how: str, *, fast: bool) -> None:
        """Restart ``slot`` after its delay, or give up after too many fast deaths."""
        slot.fast_deaths = slot.fast_deaths + 1 if fast else 0
        if slot.fast_deaths >= GIVE_UP_AFTER:
            log.error(
                "workers_failing",
                worker=slot.index,
                pid=pid,
                exit=how,
                deaths=slot.fast_deaths,
                within_s=FAST_DEATH_S,
                hint="each start died at once: read the worker's last lines above",
            )
            self._give_up(Exit.FAILED)
            return
        delay = RESTART_DELAY_S * 2**slot.fast_deaths
        slot.state = "restarting"
        log.info("worker_restarting", worker=slot.index, in_s=delay, fast_deaths=slot.fast_deaths)
        loop = asyncio.get_running_loop()
        slot.restart = loop.call_later(delay, self._spawn, slot)

    def _give_up(self, code: int) -> None:
        if self.exit_code is None:
            self.exit_code = code
        self._stop.set()

    def request_stop(self, signame: str) -> None:
        """SIGTERM/SIGINT: stop (forwarded to the workers by :meth:`run`)."""
        if not self._stop.is_set():
            log.info("stop_requested", signal=signame)
        self._stop.set()

    def forward_hup(self) -> None:
        """SIGHUP: every running worker reloads its rules and reloadable config."""
        if self._stopping:
            return
        sent = self._signal_all(signal.SIGHUP)
        log.info("sighup_forwarded", workers=sent)

    def _signal_all(self, sig: signal.Signals) -> dict[str, int]:
        """Send ``sig`` to every running worker: ``{index: pid}`` of those it reached."""
        sent: dict[str, int] = {}
        for slot in self.slots:
            if slot.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(slot.pid, sig)
                    sent[str(slot.index)] = slot.pid
        return sent

    async def run(self, admin: web.AppRunner) -> int:
        """Bind the supervisor's admin listener, start the workers, supervise until stopped;
        the exit code. ``admin`` is set up (not bound) by the caller."""
        loop = asyncio.get_running_loop()
        installed: list[signal.Signals] = []
        handlers = (
            (signal.SIGTERM, lambda: self.request_stop("SIGTERM")),
            (signal.SIGINT, lambda: self.request_stop("SIGINT")),
            (signal.SIGHUP, self.forward_hup),
            (signal.SIGCHLD, self._child.set),
        )
        for sig, handler in handlers:
            loop.add_signal_handler(sig, handler)
            installed.append(sig)
        try:
            address = self.config.server.admin_listen
            try:
                await web.TCPSite(admin, address.host, address.port).start()
            except OSError as exc:
                raise ListenError(f"cannot listen on {address}: {exc.strerror or exc}") from exc
            log.info(
                "supervisor_started",
                workers=len(self.slots),
                admin=str(address),
                public=str(self.config.server.listen),
            )
            for slot in self.slots:
                self._spawn(slot)
            reaper = loop.create_task(self._reap_until_stopped(), name="reaper")
            try:
                await self._stop.wait()
            finally:
                reaper.cancel()
            return await self._stop_workers()
        finally:
            for sig in installed:
                loop.remove_signal_handler(sig)

    async def _reap_until_stopped(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._child.wait(), REAP_POLL_S)
            self._child.clear()
            self._reap()

    async def _stop_workers(self) -> int:
        self._stopping = True
        for slot in self.slots:
            if slot.restart is not None:
                slot.restart.cancel()
                slot.restart = None
            if slot.pid is None:
                slot.state = "stopped"
        sent = self._signal_all(signal.SIGTERM)
        wait_s = stop_wait_s(self.config)
        log.info("stopping", workers=sent, wait_s=wait_s)
        deadline = time.monotonic() + wait_s
        while self._by_pid and time.monotonic() < deadline:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._child.wait(), min(0.2, REAP_POLL_S))
            self._child.clear()
            self._reap()
        left = self._signal_all(signal.SIGKILL)
        if left:
            log.error("workers_killed", workers=left, after_s=wait_s)
            deadline = time.monotonic() + 5.0
            while self._by_pid and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
                self._reap()
            self._stop_codes.update(dict.fromkeys(map(int, left), -signal.SIGKILL))
        clean = all(code == 0 for code in self._stop_codes.values())
        code = self.exit_code if self.exit_code is not None else Exit.OK
        if code == Exit.OK and not clean:
            code = Exit.FAILED
        log.info("stopped", exit=int(code))
        return int(code)
