"""Who may use the admin listener: one middleware for every path, and the browser login.

* **Host check** (DNS rebinding): on a loopback listener (127.0.0.0/8, ``::1``, ``localhost``)
  the ``Host`` header must name loopback too (``localhost``, ``127.x.x.x`` or ``[::1]``, with or
  without a port); anything else gets 403, on every path, ``/healthz`` included. A page on
  another site whose name an attacker re-points at 127.0.0.1 still sends its own name as
  ``Host``. A non-loopback listener is guarded by the token instead.
* **Token**: with ``server.admin_token`` set, every path but ``/healthz`` and ``/readyz`` needs
  ``Authorization: Bearer <token>`` (Prometheus: its ``authorization`` scrape setting) or the
  login cookie; both compared in constant time, as bytes. A header that is not valid UTF-8, or
  not a bearer token at all, is a 401 like a wrong one (never a 500).
* **Browser**: a GET without valid credentials that accepts ``text/html`` gets a small login form
  (401). ``POST /login`` with the right ``token`` sets the cookie and 303s back to the local path
  it came from (never an absolute URL: no open redirect); ``POST /logout`` clears it. The token
  never travels in a URL and is never logged.

The cookie holds ``HMAC-SHA256(key=token, label)``, not the token and not a random session id:
it needs no state, so it survives a restart and works on every replica that shares the token,
and changing the token invalidates every cookie at once. The price is that one cookie cannot be
revoked alone (logging out only clears the browser's copy): rotate the token for that. Knowing
the cookie does not reveal the token (HMAC is one-way), and it is ``HttpOnly`` and
``SameSite=Strict``, so neither scripts nor other sites' requests carry it.
"""

from __future__ import annotations

import hashlib
import hmac
import html
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import structlog
from aiohttp import hdrs, web
from aiohttp.typedefs import Handler

from router.config_read import is_loopback
from router.log_limit import LineLimiter

log = structlog.get_logger("router.admin")

OPEN_PATHS = frozenset({"/healthz", "/readyz"})
"""Probes: answer without the token (the Host check still applies)."""
LOGIN_PATH = "/login"
LOGOUT_PATH = "/logout"
LOGIN_PATHS = frozenset({LOGIN_PATH, LOGOUT_PATH})
"""The login form and its actions: reachable without the token (they are how one gets in)."""
COOKIE = "mtt_router_admin"
COOKIE_MAX_AGE_S = 12 * 3600
"""How long a browser keeps the login (the cookie's value itself changes only with the token)."""
DEFAULT_NEXT = "/status"
_COOKIE_LABEL = b"mtt-router admin login cookie v1"

_FORM = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="referrer" content="no-referrer">
<title>mtt-router admin</title></head>
<body><h1>mtt-router admin</h1><p>{message}</p>
<form method="post" action="/login">
<input type="hidden" name="next" value="{next}">
<label>Admin token (<code>server.admin_token</code>)
<input type="password" name="token" autocomplete="current-password" required autofocus></label>
<button type="submit">Log in</button>
</form></body></html>
"""
_PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
}


def cookie_value(token: str) -> str:
    """The login cookie for ``token``: an HMAC of a fixed label keyed by it (hex)."""
    return hmac.new(token.encode(), _COOKIE_LABEL, hashlib.sha256).hexdigest()


def loopback_host(value: str) -> bool:
    """``value`` (a ``Host`` header) is ``localhost``, ``127.x.x.x`` or ``[::1]``, with or without
    a port; names other than ``localhost`` (``*.localhost`` too) are not."""
    bracketed = value.startswith("[")
    if bracketed:
        host, end, rest = value[1:].partition("]")
        if not end or ":" not in host or (rest and not rest.startswith(":")):
            return False
        port = rest[1:] if rest else None
    else:
        host, colon, port_text = value.partition(":")
        port = port_text if colon else None
    if port is not None and not (port.isascii() and port.isdigit()):
        return False
    return is_loopback(host.lower())


def safe_next(value: str | None) -> str:
    """A local path to go back to after the login; anything else (an absolute or
    scheme-relative URL, backslashes, control characters) is :data:`DEFAULT_NEXT`."""
    if not value or not value.startswith("/") or value.startswith("//"):
        return DEFAULT_NEXT
    if "\\" in value or not value.isprintable() or not value.isascii():
        return DEFAULT_NEXT
    parts = urlsplit(value)
    if parts.scheme or parts.netloc or parts.path in LOGIN_PATHS:
        return DEFAULT_NEXT
    return value


def _utf8(value: str) -> bytes | None:
    # aiohttp decodes header bytes that are not UTF-8 into lone surrogates: not encodable.
    try:
        return value.encode("utf-8")
    except UnicodeEncodeError:
        return None


def _equal(given: str, expected: bytes) -> bool:
    raw = _utf8(given)
    return raw is not None and hmac.compare_digest(raw, expected)


def _wants_html(request: web.Request) -> bool:
    return request.method in ("GET", "HEAD") and "text/html" in request.headers.get(hdrs.ACCEPT, "")


def _form(message: str, next_path: str, *, status: int = 401) -> web.Response:
    body = _FORM.format(message=html.escape(message), next=html.escape(next_path, quote=True))
    return web.Response(
        text=body, status=status, content_type="text/html", headers=dict(_PAGE_HEADERS)
    )


def _see_other(location: str) -> web.Response:
    return web.Response(status=303, headers={**_PAGE_HEADERS, hdrs.LOCATION: location})


@dataclass(frozen=True)
class _Keys:
    token: bytes
    cookie: str


class AdminAuth:
    """The admin listener's access rules for one configured token (or none) and listener host."""

    def __init__(self, token: str | None, listen_host: str) -> None:
        self._keys = _Keys(token.encode(), cookie_value(token)) if token else None
        self._check_host = is_loopback(listen_host)
        self._refusals = LineLimiter(1.0)

    def install(self, app: web.Application) -> None:
        """Add the middleware, and with a token the login routes, to ``app``."""
        app.middlewares.append(self.middleware)
        if self._keys is not None:
            app.router.add_get(LOGIN_PATH, self.login_form)
            app.router.add_post(LOGIN_PATH, self.login)
            app.router.add_post(LOGOUT_PATH, self.logout)

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Host check on a loopback listener, then the token for all but the open paths."""
        if self._check_host and not loopback_host(request.headers.get(hdrs.HOST, "")):
            return web.json_response(
                {
                    "error": "Host must be localhost, 127.x.x.x or [::1] on this loopback "
                    "listener (DNS rebinding guard)"
                },
                status=403,
            )
        if self._keys is None or request.path in OPEN_PATHS or request.path in LOGIN_PATHS:
            return await handler(request)
        if self.authorised(request):
            return await handler(request)
        if hdrs.AUTHORIZATION not in request.headers and _wants_html(request):
            return _form("Log in to continue.", safe_next(request.path_qs))
        return web.json_response(
            {"error": "admin token required: Authorization: Bearer <server.admin_token>"},
            status=401,
            headers={"WWW-Authenticate": 'Bearer realm="mtt-router admin"'},
        )

    def authorised(self, request: web.Request) -> bool:
        """A valid bearer token, or (without an ``Authorization`` header) the login cookie."""
        keys = self._keys
        assert keys is not None
        header = request.headers.get(hdrs.AUTHORIZATION)
        if header is not None:
            scheme, _, credentials = header.strip().partition(" ")
            return scheme.lower() == "bearer" and _equal(credentials.strip(), keys.token)
        cookie = request.cookies.get(COOKIE)
        return cookie is not None and _equal(cookie, keys.cookie.encode())

    async def login_form(self, request: web.Request) -> web.Response:
        """``GET /login``: the form (200), going back to ``?next=`` (a local path) afterwards."""
        return _form("Log in to continue.", safe_next(request.query.get("next")), status=200)

    async def login(self, request: web.Request) -> web.Response:
        """``POST /login`` (form fields ``token``, ``next``): the cookie and a 303 back, or the
        form again (401) and one warning line, which never holds what was submitted."""
        keys = self._keys
        assert keys is not None
        try:
            form = await request.post()
        except ValueError:  # a body that is not a readable form
            form = None
        token = form.get("token") if form is not None else None
        given_next = form.get("next") if form is not None else None
        next_path = safe_next(given_next if isinstance(given_next, str) else None)
        if not isinstance(token, str) or not _equal(token, keys.token):
            held = self._refusals.allow(time.monotonic())
            if held is not None:
                log.warning("admin_login_refused", remote=request.remote, held_back=held)
            return _form("Wrong token: try again.", next_path)
        response = _see_other(next_path)
        response.set_cookie(
            COOKIE,
            keys.cookie,
            path="/",
            max_age=COOKIE_MAX_AGE_S,
            httponly=True,
            samesite="Strict",
            secure=request.secure or None,
        )
        log.info("admin_login", remote=request.remote)
        return response

    async def logout(self, request: web.Request) -> web.Response:
        """``POST /logout``: clear the cookie; 303 to the login form."""
        response = _see_other(LOGIN_PATH)
        response.del_cookie(
            COOKIE, path="/", httponly=True, samesite="Strict", secure=request.secure or None
        )
        return response
