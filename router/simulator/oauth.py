"""``/oauth/authorize`` and ``/oauth/token`` over HTTP, as MTT's authorisation server answers."""

from __future__ import annotations

from urllib.parse import urlencode, urlsplit, urlunsplit

from aiohttp import web

from router.simulator.core import SIM_KEY
from router.simulator.tokens import OAuthRefusal

_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


def _with_query(url: str, params: dict[str, str]) -> str:
    parts = urlsplit(url)
    query = "&".join(q for q in (parts.query, urlencode(params)) if q)
    return urlunsplit(parts._replace(query=query))


async def authorize(request: web.Request) -> web.StreamResponse:
    """Skip the login page: redirect straight back to ``redirect_uri?code=...&state=...``."""
    sim = request.app[SIM_KEY]
    query = dict(request.query)
    try:
        code = sim.tokens.authorize(query)
    except OAuthRefusal as exc:
        # No redirect on a bad client or redirect_uri (RFC 6749 4.1.2.1): say so to the browser.
        body = {"error": exc.error, "error_description": exc.description}
        return web.json_response(body, status=exc.status)
    back = {"code": code}
    if "state" in query:
        back["state"] = query["state"]
    raise web.HTTPFound(_with_query(query["redirect_uri"], back))


async def token(request: web.Request) -> web.Response:
    """Grant tokens for ``authorization_code`` or ``refresh_token`` (form-encoded)."""
    sim = request.app[SIM_KEY]
    if request.content_type != "application/x-www-form-urlencoded":
        body = {"error": "invalid_request", "error_description": "form-encoded body expected"}
        return web.json_response(body, status=400, headers=_NO_STORE)
    form = {k: v for k, v in (await request.post()).items() if isinstance(v, str)}
    try:
        answer = sim.tokens.grant(form)
    except OAuthRefusal as exc:
        body = {"error": exc.error, "error_description": exc.description}
        headers = dict(_NO_STORE)
        if exc.status == 401:
            headers["WWW-Authenticate"] = 'Basic realm="oauth"'
        return web.json_response(body, status=exc.status, headers=headers)
    return web.json_response(answer, headers=_NO_STORE)


def add_routes(app: web.Application) -> None:
    """Register the OAuth endpoints."""
    app.router.add_get("/oauth/authorize", authorize)
    app.router.add_post("/oauth/token", token)
