"""Run the daemon: both listeners, signals, graceful stop.

SIGTERM/SIGINT stop taking notifications, let in-flight decisions finish (bounded by the decision
budget) and exit 0. SIGHUP reloads the rules and the config keys that reload without a restart
(`routing.mode`, `routing.live_numbers`).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable
from typing import Any

import structlog
from aiohttp import web

from router.admin import create_admin_app
from router.clock import WallClock
from router.config import Config, HostPort
from router.errors import ListenError
from router.exits import Exit
from router.metrics import Metrics
from router.server import create_app
from router.services import SERVICES, WORKER
from router.worker import Worker

log = structlog.get_logger("router")


def _addresses(runner: web.AppRunner) -> list[str]:
    out = []
    for addr in runner.addresses:
        if isinstance(addr, tuple) and len(addr) >= 2:
            host = f"[{addr[0]}]" if ":" in str(addr[0]) else str(addr[0])
            out.append(f"{host}:{addr[1]}")
    return out


async def _bind(runner: web.AppRunner, address: HostPort, *, reuse_port: bool = False) -> None:
    try:
        # reuse_port: the workers of server.workers share the public port (SO_REUSEPORT).
        await web.TCPSite(runner, address.host, address.port, reuse_port=reuse_port or None).start()
    except OSError as exc:
        raise ListenError(f"cannot listen on {address}: {exc.strerror or exc}") from exc


async def serve(
    config: Config,
    *,
    metrics: Metrics | None = None,
    stop: asyncio.Event | None = None,
    on_ready: Callable[[dict[str, Any]], None] | None = None,
    clock: WallClock | None = None,
    config_path: str | None = None,
    worker: Worker | None = None,
) -> int:
    """Serve until ``stop`` is set or a SIGTERM/SIGINT arrives; returns the exit code.

    SIGHUP reloads the rules and, from ``config_path``, ``routing.mode`` and ``live_numbers``.
    ``worker``: one of ``server.workers`` (:mod:`router.worker`): the public port shared, the
    admin port its own.
    """
    loop = asyncio.get_running_loop()
    stop = stop if stop is not None else asyncio.Event()
    public = create_app(config, metrics=metrics, clock=clock, config_path=config_path)
    admin_listen = config.server.admin_listen
    if worker is not None:
        public[WORKER] = worker
        admin_listen = worker.admin_address(admin_listen)
    admin = create_admin_app(public)
    # keepalive_timeout: a connection must bring a whole request head within read_timeout_s
    # of opening (aiohttp >= 3.14.4 arms it at connect) or of its previous answer, else it is
    # closed: the header half of server.read_timeout_s (the body half is in server.py).
    idle_s = config.server.read_timeout_s
    public_runner = web.AppRunner(
        public, access_log=None, handle_signals=False, keepalive_timeout=idle_s
    )
    admin_runner = web.AppRunner(
        admin, access_log=None, handle_signals=False, keepalive_timeout=idle_s
    )
    reloads: set[asyncio.Task[bool]] = set()
    stopping = False

    def reload_rules() -> None:
        services = public.get(SERVICES)
        if services is None or stopping:
            return  # while stopping, the stores a reload uses are closing: ignore the signal
        log.info("sighup_received")
        task = loop.create_task(services.reload("SIGHUP"))
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    # Handlers first: a SIGTERM during start-up must stop cleanly, not kill the process.
    installed: list[signal.Signals] = []
    for sig, handler in (
        (signal.SIGTERM, stop.set),
        (signal.SIGINT, stop.set),
        (signal.SIGHUP, reload_rules),
    ):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, handler)
            installed.append(sig)
    # A worker of server.workers starts with them blocked (router/supervisor.py): what arrived
    # meanwhile is handled now.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, installed)
    try:
        await public_runner.setup()
        await admin_runner.setup()
        await _bind(public_runner, config.server.listen, reuse_port=worker is not None)
        await _bind(admin_runner, admin_listen)
        info: dict[str, Any] = {
            "public": _addresses(public_runner),
            "admin": _addresses(admin_runner),
            "events_path": config.mtt.events_path,
            "callback_path": config.mtt.callback_path,
        }
        if worker is not None:
            info["worker"] = worker.index
        log.info("listening", **info)
        if on_ready is not None:
            on_ready(info)
        await stop.wait()
        log.info("stopping", inflight=public[SERVICES].engine.inflight)
    finally:
        stopping = True
        # A reload in flight uses the rules source and stores: finish it before they close.
        for task in reloads:
            task.cancel("shutdown")
        if reloads:
            await asyncio.wait(set(reloads), timeout=2.0)
        # Admin first (nothing depends on it), then the public app, whose cleanup context
        # drains in-flight decisions before closing the session and stores they use. The
        # signal handlers stay until then: a second SIGTERM or a SIGHUP while draining must not
        # fall through to the default action and kill the process mid-transfer.
        await admin_runner.cleanup()
        await public_runner.cleanup()
        for sig in installed:
            loop.remove_signal_handler(sig)
    log.info("stopped")
    return Exit.OK
