"""Run the daemon: both listeners, signals, graceful stop.

SIGTERM/SIGINT stop taking notifications, let in-flight decisions finish (bounded by the decision
budget) and exit 0. SIGHUP reloads the rules.
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
from router.config import Config
from router.metrics import Metrics
from router.server import create_app
from router.services import SERVICES, Clock

log = structlog.get_logger("router")


def _addresses(runner: web.AppRunner) -> list[str]:
    out = []
    for addr in runner.addresses:
        if isinstance(addr, tuple) and len(addr) >= 2:
            host = f"[{addr[0]}]" if ":" in str(addr[0]) else str(addr[0])
            out.append(f"{host}:{addr[1]}")
    return out


async def serve(
    config: Config,
    *,
    metrics: Metrics | None = None,
    stop: asyncio.Event | None = None,
    on_ready: Callable[[dict[str, Any]], None] | None = None,
    clock: Clock | None = None,
) -> int:
    """Serve until ``stop`` is set or a SIGTERM/SIGINT arrives; returns the exit code."""
    loop = asyncio.get_running_loop()
    stop = stop if stop is not None else asyncio.Event()
    public = create_app(config, metrics=metrics, clock=clock)
    admin = create_admin_app(public)
    public_runner = web.AppRunner(public, access_log=None, handle_signals=False)
    admin_runner = web.AppRunner(admin, access_log=None, handle_signals=False)
    reloads: set[asyncio.Task[bool]] = set()

    def reload_rules() -> None:
        services = public.get(SERVICES)
        if services is None:
            return
        log.info("sighup_received")
        task = loop.create_task(services.reload_rules("SIGHUP"))
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    installed: list[signal.Signals] = []
    await public_runner.setup()
    try:
        await admin_runner.setup()
        await web.TCPSite(
            public_runner, config.server.listen.host, config.server.listen.port
        ).start()
        await web.TCPSite(
            admin_runner, config.server.admin_listen.host, config.server.admin_listen.port
        ).start()
        for sig, handler in (
            (signal.SIGTERM, stop.set),
            (signal.SIGINT, stop.set),
            (signal.SIGHUP, reload_rules),
        ):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(sig, handler)
                installed.append(sig)
        info = {
            "public": _addresses(public_runner),
            "admin": _addresses(admin_runner),
            "events_path": config.mtt.events_path,
            "callback_path": config.mtt.callback_path,
        }
        log.info("listening", **info)
        if on_ready is not None:
            on_ready(info)
        await stop.wait()
        log.info("stopping", inflight=public[SERVICES].engine.inflight)
    finally:
        # Admin first (nothing depends on it), then the public app, whose cleanup context
        # drains in-flight decisions before closing the session and stores they use. The
        # signal handlers stay until then: a second SIGTERM or a SIGHUP while draining must not
        # fall through to the default action and kill the process mid-transfer.
        await admin_runner.cleanup()
        await public_runner.cleanup()
        for task in reloads:
            task.cancel("shutdown")
        for sig in installed:
            loop.remove_signal_handler(sig)
    log.info("stopped")
    return 0
