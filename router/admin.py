"""The admin listener (loopback by default): metrics, health, readiness, status (JSON, and the
status page at ``/``), OAuth start.

It shares the daemon's :class:`~router.services.Services` with the public app, which owns them.
Who may use which path (the Host check, ``server.admin_token``, the browser login) is one
middleware, :class:`~router.admin_auth.AdminAuth`: handlers here check nothing themselves.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable
from typing import TypeVar

import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from router.admin_auth import AdminAuth
from router.errors import StorageError
from router.numbers import NumberError, normalize
from router.overview import gather
from router.services import CONFIG, SERVICES, Services
from router.state.clients_csv import check_manager_id
from router.state.protocols import ClientStore
from router.status_page import PAGE_HEADERS, render

T = TypeVar("T")
log = structlog.get_logger("router.admin")

PUBLIC_APP = web.AppKey("public_app", web.Application)


def _services(request: web.Request) -> Services:
    return request.app[PUBLIC_APP][SERVICES]


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text format."""
    services = _services(request)
    body = generate_latest(services.metrics.registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def healthz(request: web.Request) -> web.Response:
    """The process is alive and its event loop answers."""
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """200 only with a usable token, rules loaded, the storage answering and the external numbers
    known; else 503 saying why."""
    services = _services(request)
    checks: dict[str, str] = {}
    problems: list[str] = []
    if services.tokens.needs_login or services.tokens.tokens is None:
        checks["token"] = "needs login: open /oauth/start on the admin listener"
        problems.append("token")
    else:
        checks["token"] = "ok"
    if services.rules.current is None:
        checks["rules"] = "no rules" + (
            f" ({services.rules.last_error})" if services.rules.last_error else ""
        )
        problems.append("rules")
    else:
        checks["rules"] = "ok"
    if await services.stores.ping():
        checks["storage"] = "ok"
    else:
        checks["storage"] = "down"
        problems.append("storage")
    directory = services.directory
    if directory.numbers is None:  # only present while unknown: which calls are parked is a guess
        named = ", ".join(sorted(directory.park_named)) or "none (routing.park names no number)"
        checks["numbers"] = (
            f"unknown: {directory.numbers_unknown or 'not fetched yet'}; "
            f"calls count as parked only to the numbers routing.park names: {named}"
        )
        problems.append("numbers")
    status = 503 if problems else 200
    return web.json_response({"ready": not problems, "checks": checks}, status=status)


async def oauth_start(request: web.Request) -> web.Response:
    """302 to MTT's authorize page with a fresh single-use ``state``."""
    url = await _services(request).tokens.begin_login()
    raise web.HTTPFound(url)


async def status(request: web.Request) -> web.Response:
    """Operator's overview as JSON (:func:`router.overview.gather`; never a token)."""
    return web.json_response(gather(_services(request)))


async def page(request: web.Request) -> web.Response:
    """``GET /``: the status page, the same overview as ``/status`` for a person."""
    body = render(gather(_services(request)))
    return web.Response(
        text=body, content_type="text/html", charset="utf-8", headers=dict(PAGE_HEADERS)
    )


def _client_map(request: web.Request) -> ClientStore:
    """The storage's client map (the middleware has checked the token)."""
    clients = _services(request).stores.clients
    if clients is None:
        raise web.HTTPConflict(
            text='{"error": "per-client edits need a shared storage (storage: redis://)"}',
            content_type="application/json",
        )
    return clients


def _number(request: web.Request) -> str:
    raw = request.match_info["number"]
    try:
        return normalize(raw)
    except NumberError as exc:
        raise web.HTTPBadRequest(
            text=json.dumps({"error": str(exc)}), content_type="application/json"
        ) from None


async def client_get(request: web.Request) -> web.Response:
    """``GET /clients/{number}``: the caller's personal manager from the client map."""
    clients, number = _client_map(request), _number(request)
    manager = await _storage(clients.get(number))
    if manager is None:
        return web.json_response({"number": number, "error": "not in the client map"}, status=404)
    return web.json_response({"number": number, "manager": manager})


async def client_put(request: web.Request) -> web.Response:
    """``PUT /clients/{number}`` with ``{"manager": ID}``: set the caller's personal manager."""
    clients, number = _client_map(request), _number(request)
    try:
        body = await request.json()
    except ValueError:
        body = None
    manager = body.get("manager") if isinstance(body, dict) else None
    if not isinstance(manager, str) or not manager:
        return web.json_response({"error": 'body must be {"manager": "<manager id>"}'}, status=400)
    try:
        check_manager_id(manager)  # the rules check it too, when there are rules
    except ValueError as exc:
        return web.json_response({"error": str(exc)}, status=400)
    loaded = _services(request).rules.current
    if loaded is not None and manager not in loaded.rules.managers:
        known = ", ".join(sorted(loaded.rules.managers))
        return web.json_response(
            {"error": f"unknown manager {manager!r} (rules have: {known})"}, status=422
        )
    await _storage(clients.set(number, manager))
    log.info("client_edited", caller=number, manager=manager, who=request.remote)
    return web.json_response({"number": number, "manager": manager})


async def client_delete(request: web.Request) -> web.Response:
    """``DELETE /clients/{number}``: forget the caller."""
    clients, number = _client_map(request), _number(request)
    manager = await _storage(clients.get(number))  # for the log line only
    if not await _storage(clients.delete(number)):
        return web.json_response({"number": number, "error": "not in the client map"}, status=404)
    log.info("client_edited", caller=number, manager=None, was=manager, who=request.remote)
    return web.json_response({"number": number, "deleted": True})


async def _storage(awaitable: Awaitable[T]) -> T:
    try:
        return await awaitable
    except StorageError as exc:
        raise web.HTTPServiceUnavailable(
            text=json.dumps({"error": f"storage: {exc}"}), content_type="application/json"
        ) from None


def create_admin_app(public_app: web.Application) -> web.Application:
    """The admin application; start it after ``public_app``, whose services it reads.

    ``/clients/{number}`` (and the login form) exist only when ``server.admin_token`` is
    configured; then every path but ``/healthz`` and ``/readyz`` needs it.
    """
    server = public_app[CONFIG].server
    app = web.Application()
    app[PUBLIC_APP] = public_app
    AdminAuth(server.admin_token, server.admin_listen.host).install(app)
    if server.admin_token:
        app.router.add_get("/clients/{number}", client_get)
        app.router.add_put("/clients/{number}", client_put)
        app.router.add_delete("/clients/{number}", client_delete)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/oauth/start", oauth_start)
    app.router.add_get("/status", status)
    app.router.add_get("/", page)
    return app
