"""The supervisor's admin listener (``server.admin_listen`` with ``server.workers`` > 1).

What a load balancer and a container's health check ask, answered for the whole set of workers
(each asked on its own admin listener, port + index, within :data:`PROBE_TIMEOUT_S`):

- ``GET /healthz``: 200 while at least one worker answers its ``/healthz``; else 503.
- ``GET /readyz``: 200 when at least one worker is ready and none that answers is not. The
  kernel hands new connections only to workers that listen, so a worker being restarted does
  not make the host unready; a worker that listens but says 503 (or answered before and now
  does not) takes its share of MTT's notifications, so it does. A worker still starting (it has
  not answered yet) does not count either way. The body says which worker is what.
- ``GET /workers``: each worker's index, pid, state, restarts, last exit and admin URL.
- ``GET /metrics``: 404 naming the workers' admin ports: Prometheus scrapes each worker (a
  scrape of this port would be one of N, or a sum whose gauges mean nothing).
- Any other path (``/``, ``/status``, ``/oauth/start``, ``/clients/...``): 307 to the same path
  on a running worker's admin port (the status page and ``/status`` are that worker's).

The same :class:`~router.admin_auth.AdminAuth` guards it as the workers' admin listeners (Host
check on loopback, ``server.admin_token`` on all but the probes); its login cookie is valid on
the workers' ports too.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
from aiohttp import web

from router.admin_auth import AdminAuth
from router.supervisor import Slot, Supervisor

PROBE_TIMEOUT_S = 1.0
SUPERVISOR = web.AppKey("supervisor", Supervisor)
SESSION = web.AppKey("probe_session", aiohttp.ClientSession)


async def _probe(app: web.Application, slot: Slot, path: str) -> tuple[int, Any] | None:
    """``(status, JSON body)`` of a worker's admin ``path``, or None when it did not answer."""
    supervisor = app[SUPERVISOR]
    if slot.pid is None:
        return None
    try:
        async with app[SESSION].get(supervisor.admin_url(slot) + path) as resp:
            body = await resp.json(content_type=None)
    except (aiohttp.ClientError, TimeoutError, ValueError):
        return None
    slot.seen_up = True
    return resp.status, body


async def _probe_all(request: web.Request, path: str) -> list[tuple[Slot, tuple[int, Any] | None]]:
    slots = request.app[SUPERVISOR].slots
    answers = await asyncio.gather(*(_probe(request.app, slot, path) for slot in slots))
    return list(zip(slots, answers, strict=True))


def _unanswered(slot: Slot) -> str:
    if slot.pid is None:
        return slot.state  # restarting, stopped
    return "not answering" if slot.seen_up else "starting"


async def healthz(request: web.Request) -> web.Response:
    """200 while at least one worker answers its /healthz."""
    workers: dict[str, str] = {}
    for slot, answer in await _probe_all(request, "/healthz"):
        if answer is None:
            workers[str(slot.index)] = _unanswered(slot)
        else:
            workers[str(slot.index)] = "ok" if answer[0] == 200 else f"status {answer[0]}"
    alive = any(state == "ok" for state in workers.values())
    return web.json_response(
        {"status": "ok" if alive else "down", "workers": workers}, status=200 if alive else 503
    )


async def readyz(request: web.Request) -> web.Response:
    """200 when a worker is ready and no listening worker is not (module docstring)."""
    workers: dict[str, Any] = {}
    ready_any, blocked = False, False
    for slot, answer in await _probe_all(request, "/readyz"):
        entry: dict[str, Any] = {"pid": slot.pid}
        if answer is None:
            entry["state"] = _unanswered(slot)
            blocked |= entry["state"] == "not answering"
        else:
            status, body = answer
            ready = status == 200
            entry["state"] = "ready" if ready else "not ready"
            if isinstance(body, dict) and "checks" in body:
                entry["checks"] = body["checks"]
            ready_any |= ready
            blocked |= not ready
        workers[str(slot.index)] = entry
    ready = ready_any and not blocked
    return web.json_response({"ready": ready, "workers": workers}, status=200 if ready else 503)


async def workers(request: web.Request) -> web.Response:
    """Each worker: index, pid, state, restarts, last exit, admin URL."""
    supervisor = request.app[SUPERVISOR]
    return web.json_response(
        {
            "workers": [
                slot.view() | {"admin": supervisor.admin_url(slot)} for slot in supervisor.slots
            ]
        }
    )


async def metrics(request: web.Request) -> web.Response:
    """404: the metrics are the workers' (scrape each admin port)."""
    supervisor = request.app[SUPERVISOR]
    return web.json_response(
        {
            "error": "this is the supervisor of server.workers: scrape each worker's /metrics",
            "targets": [supervisor.admin_url(slot) + "/metrics" for slot in supervisor.slots],
        },
        status=404,
    )


async def elsewhere(request: web.Request) -> web.Response:
    """307 to the same path and query on a running worker's admin listener."""
    supervisor = request.app[SUPERVISOR]
    running = [slot for slot in supervisor.slots if slot.pid is not None]
    if not running:
        return web.json_response({"error": "no worker is running"}, status=503)
    slot = next((s for s in running if s.seen_up), running[0])
    port = supervisor.config.server.admin_listen.port + slot.index
    location = request.url.with_port(port)
    raise web.HTTPTemporaryRedirect(location)


async def _session_ctx(app: web.Application) -> Any:
    timeout = aiohttp.ClientTimeout(total=PROBE_TIMEOUT_S)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        app[SESSION] = session
        yield


def create_supervisor_app(supervisor: Supervisor) -> web.Application:
    """The supervisor's admin application."""
    server = supervisor.config.server
    app = web.Application()
    app[SUPERVISOR] = supervisor
    AdminAuth(server.admin_token, server.admin_listen.host).install(app)
    app.cleanup_ctx.append(_session_ctx)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/workers", workers)
    app.router.add_get("/metrics", metrics)
    app.router.add_route("*", "/{tail:.*}", elsewhere)
    return app
