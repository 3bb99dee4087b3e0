"""The public listener: what MTT (and the operator's browser, once) talks to.

- ``GET P?code=&state=``: the OAuth callback.
- ``POST P/events``: notifications. Acknowledged at once; the work goes on in the background.
  Bad input gets 400/413 with a short reason, never a 5xx.
"""

from __future__ import annotations

import asyncio
import time

import orjson
import structlog
from aiohttp import web
from prometheus_client import Counter

from router.clock import WallClock
from router.config import Config
from router.errors import EventShapeError
from router.events import CallEvent, Event, parse_event
from router.log_limit import LineLimiter
from router.metrics import Metrics
from router.oauth_callback import LoginOutcome, OAuthCallback, add_callback_routes
from router.services import CLOCK, CONFIG, CONFIG_PATH, METRICS, SERVICES, services_ctx

log = structlog.get_logger("router.server")

MAX_BODY_BYTES = 1024 * 1024
"""Notifications are a few hundred bytes; anything over 1 MiB is refused with 413."""

_OK = b"ok"


class _NotificationCounter:
    """``notifications_total{event,state}`` with label children cached (hot path)."""

    def __init__(self, counter: Counter) -> None:
        self._counter = counter
        self._children: dict[tuple[str, str], Counter] = {}

    def inc(self, event: Event) -> None:
        key = event.labels
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self._counter.labels(*key)
        child.inc()


class _RejectLines:
    """At most one ``bad_notification`` line a second per kind, with the count held back: a
    flood of forged or broken posts is counted in full (``rejected_total``), not logged in full."""

    def __init__(self) -> None:
        self._limiters: dict[str, LineLimiter] = {}

    def allow(self, kind: str, now: float) -> int | None:
        limiter = self._limiters.get(kind)
        if limiter is None:
            if len(self._limiters) >= 64:  # kinds are ours (a handful); never attacker-made
                return None
            limiter = self._limiters[kind] = LineLimiter()
        return limiter.allow(now)


NOTIFICATIONS = web.AppKey("notification_counter", _NotificationCounter)
REJECT_LINES = web.AppKey("reject_lines", _RejectLines)


def _bad(
    request: web.Request, status: int, reason: str, kind: str, rejected: str = "bad_request"
) -> web.Response:
    request.app[METRICS].rejected.labels("too_large" if status == 413 else rejected).inc()
    now = asyncio.get_running_loop().time()
    if (held := request.app[REJECT_LINES].allow(kind, now)) is not None:
        log.warning(
            "bad_notification",
            status=status,
            kind=kind,
            reason=reason,
            peer=request.remote,
            held_back=held,
        )
    return web.Response(status=status, text=reason + "\n")


async def events(request: web.Request) -> web.Response:
    """``POST P/events``: parse, count, hand to the engine, answer 200; with ``log.capture``,
    the POST as received and the status answered are queued for the capture file."""
    capture = request.app[SERVICES].capture
    if capture is None:
        return (await _receive(request))[0]
    received_at_s = time.time()
    response, body = await _receive(request)
    capture.add(received_at_s, request.remote, response.status, body, request.content_length or 0)
    return response


async def _receive(request: web.Request) -> tuple[web.Response, bytes | None]:
    """The answer to one notification, and its body as read (``None``: never read)."""
    received_at = asyncio.get_running_loop().time()
    guard = request.app[SERVICES].guard
    if not guard.admit(guard.client_address(request.remote, request.headers)):
        return _bad(
            request, 403, "source not allowed (server.allow_from)", "source", "source"
        ), None
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        return _bad(request, 413, "body over 1 MiB", "too_large"), None
    try:
        # A client trickling its body must not hold a handler (and a connection) for ever.
        async with asyncio.timeout(request.app[CONFIG].server.read_timeout_s):
            body = await request.read()
    except TimeoutError:
        return _bad(request, 408, "body not received in time", "timeout", "timeout"), None
    except web.HTTPRequestEntityTooLarge:
        return _bad(request, 413, "body over 1 MiB", "too_large"), None
    except web.RequestPayloadError:
        # e.g. "Content-Encoding: gzip" on a body that is not gzip: aiohttp would answer 500.
        bad = _bad(request, 400, "unreadable body (bad content encoding)", "unreadable_body")
        return bad, None
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        return _bad(request, 400, f"malformed JSON: {exc}", "malformed_json"), body
    try:
        event = parse_event(data)
    except EventShapeError as exc:
        return _bad(request, 400, f"not a notification: {exc}", "wrong_shape"), body
    centrex_id = request.app[CONFIG].mtt.centrex_id
    if centrex_id and isinstance(event, CallEvent) and event.for_another_account(centrex_id):
        return _bad(request, 403, "notification for another account", "account", "account"), body
    request.app[NOTIFICATIONS].inc(event)
    request.app[SERVICES].engine.handle(event, received_at)
    # text/plain like every other answer here (aiohttp would say application/octet-stream).
    return web.Response(body=_OK, content_type="text/plain"), body


async def oauth_callback(request: web.Request) -> web.Response:
    """``GET P?code=&state=``: :class:`router.oauth_callback.OAuthCallback` with the daemon's
    stores; a completed login triggers a directory refresh."""
    services = request.app[SERVICES]

    def on_outcome(outcome: LoginOutcome) -> None:
        if outcome.result == "authorised":
            services.directory.request_refresh()

    callback = OAuthCallback(
        redeem_state=services.stores.states.redeem,
        complete_login=services.tokens.complete_login,
        on_outcome=on_outcome,
        retry_hint="Try again from /oauth/start on the admin listener.",
    )
    return await callback.handle(request)


def create_app(
    config: Config,
    *,
    metrics: Metrics | None = None,
    clock: WallClock | None = None,
    config_path: str | None = None,
) -> web.Application:
    """The public application; its cleanup context owns every resource of the daemon.

    ``clock`` replaces the wall clock that schedules are evaluated against (demo, tests);
    ``config_path`` is where SIGHUP re-reads the keys that reload without a restart.
    """
    app = web.Application(client_max_size=MAX_BODY_BYTES)
    app[CONFIG] = config
    if config_path is not None:
        app[CONFIG_PATH] = config_path
    if clock is not None:
        app[CLOCK] = clock
    app[METRICS] = metrics if metrics is not None else Metrics()
    app[NOTIFICATIONS] = _NotificationCounter(app[METRICS].notifications)
    app[REJECT_LINES] = _RejectLines()
    app.cleanup_ctx.append(services_ctx)
    add_callback_routes(app.router, config.mtt.callback_path, oauth_callback)
    app.router.add_post(config.mtt.events_path, events)
    return app
