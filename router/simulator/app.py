"""Wiring: the aiohttp application, and a context manager that serves it on a port."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from aiohttp import web

from router.simulator import api, control, oauth
from router.simulator.config import SimConfig
from router.simulator.core import SIM_KEY, Simulator


def create_sim_app(
    config: SimConfig | None = None, *, sim: Simulator | None = None
) -> web.Application:
    """The simulator as an aiohttp app; its :class:`Simulator` is ``app[SIM_KEY]``.

    The webhook session opens when the app starts and, with every timer, closes when it stops.
    """
    simulator = sim if sim is not None else Simulator(config)
    app = web.Application(middlewares=[api.mtt_middleware], client_max_size=1024**2)
    app[SIM_KEY] = simulator

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        await simulator.open()
        yield
        await simulator.close()

    app.cleanup_ctx.append(lifecycle)
    oauth.add_routes(app)
    control.add_routes(app)
    api.add_routes(app)
    return app


@asynccontextmanager
async def serve_simulator(
    config: SimConfig | None = None, *, host: str = "127.0.0.1", port: int = 0
) -> AsyncIterator[Simulator]:
    """Serve a fresh simulator on ``host:port`` (0: any free port); ``sim.url`` is its base URL."""
    app = create_sim_app(config)
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        sim = app[SIM_KEY]
        bound = runner.addresses[0]
        sim.url = f"http://{_host(bound[0])}:{bound[1]}"
        yield sim
    finally:
        await runner.cleanup()


def _host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
