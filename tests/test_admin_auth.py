"""Who may use the admin listener (router/admin_auth.py): the token on every path but the probes,
the browser login and its cookie, the Host check against DNS rebinding; a real daemon over HTTP."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from multidict import CIMultiDictProxy

from router.admin import create_admin_app
from router.admin_auth import (
    COOKIE,
    DEFAULT_NEXT,
    LOGIN_PATHS,
    OPEN_PATHS,
    AdminAuth,
    cookie_value,
    loopback_host,
    safe_next,
)
from router.server import create_app
from router.simulator import SimConfig
from tests.fixtures.daemon import IVANOV_CLIENT, RunningDaemon, StartDaemon, daemon_sim_config
from tests.mtt_support import json_logs
from tests.polling import eventually

TOKEN = "admin-token-0123456789-abcdef"
BEARER = {"Authorization": f"Bearer {TOKEN}"}
BROWSER = {"Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}
JSON = {"Accept": "application/json"}


@pytest.fixture
def sim_config() -> SimConfig:
    """The simulator for daemon tests (1 s parking window)."""
    return daemon_sim_config()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """A session that keeps no cookies: each test sends exactly the credentials it means to."""
    async with aiohttp.ClientSession(
        cookie_jar=aiohttp.DummyCookieJar(), timeout=aiohttp.ClientTimeout(total=10)
    ) as session:
        yield session


async def guarded(start_daemon: StartDaemon, *, authorised: bool = True) -> RunningDaemon:
    """A daemon with ``server.admin_token`` set, once /readyz (open to all) answers 200."""
    daemon = await start_daemon(
        authorised=authorised, wait_ready=False, extra={"server": {"admin_token": TOKEN}}
    )
    if authorised:

        async def ready() -> bool:
            return (await daemon.admin("/readyz"))[0] == 200

        await eventually(ready, "/readyz answers 200")
    return daemon


def admin_routes(daemon: RunningDaemon) -> list[tuple[str, str]]:
    """``(method, path)`` of every route of the admin app this daemon's config builds, with a
    number in place of ``{number}``."""
    app = create_admin_app(create_app(daemon.config))
    routes = []
    for route in app.router.routes():
        path = route.resource.canonical if route.resource is not None else ""
        routes.append((route.method, path.replace("{number}", IVANOV_CLIENT)))
    return routes


async def request(
    http: aiohttp.ClientSession,
    method: str,
    url: str,
    headers: dict[str, str] | None = None,
    **kwargs: Any,
) -> tuple[int, CIMultiDictProxy[str], str]:
    """One request, redirects not followed: ``(status, headers, text)``."""
    async with http.request(method, url, headers=headers, allow_redirects=False, **kwargs) as resp:
        return resp.status, resp.headers, await resp.text()


async def raw(daemon: RunningDaemon, head: bytes, body: bytes = b"") -> tuple[int, bytes]:
    """Send ``head`` (request line and headers, CRLF-separated, without the blank line) and
    ``body`` on a plain socket, so aiohttp's own parsing of the bytes is exercised."""
    parts = urlsplit(daemon.admin_url)
    assert parts.hostname is not None
    assert parts.port is not None
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    try:
        writer.write(head + b"\r\nConnection: close\r\n\r\n" + body)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    status_line, _, rest = answer.partition(b"\r\n")
    return int(status_line.split()[1]), rest


def set_cookie(headers: CIMultiDictProxy[str]) -> SimpleCookie:
    """The ``Set-Cookie`` headers of an answer, parsed."""
    cookie: SimpleCookie = SimpleCookie()
    for line in headers.getall("Set-Cookie", []):
        cookie.load(line)
    return cookie


async def login(
    daemon: RunningDaemon, http: aiohttp.ClientSession, token: str, next_path: str = "/status"
) -> tuple[int, CIMultiDictProxy[str], str]:
    """``POST /login`` as the browser's form does."""
    return await request(
        http, "POST", daemon.admin_url + "/login", data={"token": token, "next": next_path}
    )


@contextmanager
def captured_logs() -> Iterator[io.StringIO]:
    """The daemon's JSON log lines (everything the process logs) while inside."""
    with json_logs() as logs:
        yield logs


# -- the token ---------------------------------------------------------------------------------


async def test_every_admin_route_needs_the_token_except_the_probes(
    start_daemon: StartDaemon, http: aiohttp.ClientSession
) -> None:
    """Every route of the admin app (listed from its router, so a new route is covered) answers
    401 without the token or with a wrong one, and something else with it; only /healthz and
    /readyz are open (and the login form, the way in)."""
    daemon = await guarded(start_daemon)
    routes = admin_routes(daemon)
    paths = {path for _, path in routes}
    assert {"/metrics", "/status", "/oauth/start", f"/clients/{IVANOV_CLIENT}"} <= paths
    assert paths >= OPEN_PATHS | LOGIN_PATHS
    wrong = {"Authorization": f"Bearer {TOKEN}x"}
    for method, path in routes:
        url = daemon.admin_url + path
        body = {"json": {"manager": "ivanov"}} if method == "PUT" else {}
        if path in OPEN_PATHS:
            status, _, _ = await request(http, method, url, JSON)
            assert status == 200, (method, path)
            continue
        if path in LOGIN_PATHS:
            continue  # the way in: tested below
        for headers in (JSON, BROWSER | wrong, JSON | wrong, {"Authorization": TOKEN}):
            status, answer, _ = await request(http, method, url, headers, **body)
            assert status == 401, (method, path, headers)
            assert answer["WWW-Authenticate"].startswith("Bearer")
        status, _, _ = await request(http, method, url, JSON | BEARER, **body)
        # 409: per-client edits need Redis; the point is that the handler ran.
        assert status not in (401, 403, 404, 405), (method, path, status)
    # A path that does not exist is no way around it either.
    assert (await request(http, "GET", daemon.admin_url + "/nowhere", JSON))[0] == 401
    assert (await request(http, "GET", daemon.admin_url + "/nowhere", BEARER))[0] == 404


async def test_bearer_token_reads_metrics_and_status(
    start_daemon: StartDaemon, http: aiohttp.ClientSession
) -> None:
    """What Prometheus sends (``authorization`` scrape setting): the metrics; the scheme's case
    does not matter; ``/status`` JSON likewise."""
    daemon = await guarded(start_daemon)
    status, headers, text = await request(http, "GET", daemon.admin_url + "/metrics", BEARER)
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain")
    assert "mtt_router_needs_login" in text
    status, _, _ = await request(
        http, "GET", daemon.admin_url + "/metrics", {"Authorization": f"bearer {TOKEN}"}
    )
    assert status == 200
    status, _, text = await request(http, "GET", daemon.admin_url + "/status", BEARER)
    assert status == 200
    assert json.loads(text)["tokens"]["authorized"] is True


async def test_wrong_or_malformed_bearer_is_401(
    start_daemon: StartDaemon, http: aiohttp.ClientSession
) -> None:
    """A prefix of the token, the token with more, another scheme, an empty one: 401 (JSON)."""
    daemon = await guarded(start_daemon)
    for value in (
        f"Bearer {TOKEN[:-1]}",
        f"Bearer {TOKEN}0",
        f"Basic {TOKEN}",
        "Bearer",
        "Bearer ",
        "",
        f"Bearer {TOKEN[:8]}é{TOKEN[9:]}",
    ):
        status, _, text = await request(
            http, "GET", daemon.admin_url + "/status", {"Authorization": value}
        )
        assert status == 401, value
        assert "admin token required" in json.loads(text)["error"]


async def test_non_utf8_authorization_is_401_and_the_daemon_stays_up(
    start_daemon: StartDaemon,
) -> None:
    """Bytes that are not UTF-8 in ``Authorization``, in the cookie or in the login form: 401,
    never a 500; the daemon answers afterwards."""
    daemon = await guarded(start_daemon)
    host = urlsplit(daemon.admin_url).netloc.encode()
    for header in (
        b"Authorization: Bearer \xff\xfe",
        b"Authorization: \xff\xfe " + TOKEN.encode(),
        b"Authorization: Bearer " + TOKEN.encode() + b"\xff",
        b"Cookie: " + COOKIE.encode() + b"=\xff\xfe",
    ):
        status, rest = await raw(
            daemon, b"GET /status HTTP/1.1\r\nHost: " + host + b"\r\n" + header
        )
        assert status == 401, (header, rest)
    form = b"token=\xff\xfe" + TOKEN.encode() + b"&next=/status"
    status, _ = await raw(
        daemon,
        b"POST /login HTTP/1.1\r\nHost: " + host + b"\r\n"
        b"Content-Type: application/x-www-form-urlencoded\r\n"
        b"Content-Length: " + str(len(form)).encode(),
        form,
    )
    assert status == 401
    status, _ = await raw(daemon, b"GET /healthz HTTP/1.1\r\nHost: " + host)
    assert status == 200
    assert daemon.sample("mtt_router_needs_login") == 0
    assert not daemon.task.done()


# -- the browser -------------------------------------------------------------------------------


async def test_browser_gets_a_login_form_and_the_cookie_works(
    start_daemon: StartDaemon, http: aiohttp.ClientSession
) -> None:
    """A browser's GET without credentials: 401 with the form (coming back to the page); the
    right token: 303 there and an HttpOnly, SameSite=Strict cookie (not Secure on plain HTTP)
    that is not the token; the cookie opens the pages; /logout clears it."""
    daemon = await guarded(start_daemon)
    status, headers, page = await request(http, "GET", daemon.admin_url + "/status?x=1", BROWSER)
    assert status == 401
    assert headers["Content-Type"].startswith("text/html")
    assert '<form method="post" action="/login">' in page
    assert 'name="next" value="/status?x=1"' in page
    assert 'type="password" name="token"' in page
    assert TOKEN not in page

    status, headers, _ = await login(daemon, http, TOKEN, "/status?x=1")
    assert status == 303
    assert headers["Location"] == "/status?x=1"
    cookie = set_cookie(headers)[COOKIE]
    assert cookie.value == cookie_value(TOKEN)
    assert TOKEN not in cookie.value
    assert TOKEN not in str(headers)
    assert cookie["httponly"] is True
    assert cookie["samesite"] == "Strict"
    assert cookie["path"] == "/"
    assert not cookie["secure"]

    with_cookie = {"Cookie": f"{COOKIE}={cookie.value}"}
    status, _, text = await request(http, "GET", daemon.admin_url + "/status", with_cookie)
    assert status == 200
    assert json.loads(text)["rules"]["loaded"] is True
    status, _, _ = await request(http, "GET", daemon.admin_url + "/metrics", with_cookie)
    assert status == 200
    # A wrong cookie, or a wrong Authorization header next to the right cookie, is not enough.
    wrong_cookie = {"Cookie": f"{COOKIE}={cookie.value[:-1]}0"}
    assert (await request(http, "GET", daemon.admin_url + "/status", wrong_cookie))[0] == 401
    mixed = with_cookie | {"Authorization": "Bearer nope"}
    assert (await request(http, "GET", daemon.admin_url + "/status", mixed))[0] == 401

    status, headers, _ = await request(http, "POST", daemon.admin_url + "/logout", with_cookie)
    assert (status, headers["Location"]) == (303, "/login")
    cleared = set_cookie(headers)[COOKIE]
    assert cleared.value == ""
    assert cleared["max-age"] == "0"
    status, _, page = await request(http, "GET", daemon.admin_url + "/login", BROWSER)
    assert status == 200
    assert f'value="{DEFAULT_NEXT}"' in page


async def test_wrong_login_is_401_with_the_form_and_one_warning(
    start_daemon: StartDaemon, http: aiohttp.ClientSession
) -> None:
    """A wrong token: the form again (401), no cookie, one warning line that never holds the
    submitted value."""
    with captured_logs() as logs:
        daemon = await guarded(start_daemon)
        attempt = "not-the-admin-token-but-close"
        status, headers, page = await login(daemon, http, attempt, "/oauth/start")
        assert status == 401
        assert "Wrong token" in page
        assert 'name="next" value="/oauth/start"' in page
        assert COOKIE not in set_cookie(headers)
        status, _, _ = await request(http, "POST", daemon.admin_url + "/login", data={})
        assert status == 401
    lines = [json.loads(x) for x in logs.getvalue().splitlines()]
    refused = [x for x in lines if x["event"] == "admin_login_refused"]
    # One line per refusal, at most one a second (the second is held back if it came as fast).
    assert 1 <= len(refused) <= 2
    assert {line["level"] for line in refused} == {"warning"}
    assert attempt not in logs.getvalue()


@pytest.mark.parametrize(
    "next_path",
    [
        "https://evil.example/",
        "//evil.example/status",
        "/\\evil.example",
        "\\\\evil.example",
        "javascript:alert(1)",
        "http:/evil.example",
        "/status\r\nSet-Cookie: x=1",
        "/login",
        "",
    ],
)
async def test_login_redirect_refuses_anything_but_a_local_path(
    start_daemon: StartDaemon, http: aiohttp.ClientSession, next_path: str
) -> None:
    """No open redirect: an absolute or scheme-relative URL (or a header injection) as ``next``
    sends the browser to /status instead."""
    daemon = await guarded(start_daemon)
    status, headers, _ = await login(daemon, http, TOKEN, next_path)
    assert (status, headers["Location"]) == (303, DEFAULT_NEXT)


def test_safe_next_keeps_local_paths_with_their_query() -> None:
    """A local path (and its query) is where the login goes back to."""
    assert safe_next("/oauth/start") == "/oauth/start"
    assert safe_next("/status?x=1&y=%2F") == "/status?x=1&y=%2F"
    assert safe_next(None) == DEFAULT_NEXT
    assert safe_next("/caf\u00e9") == DEFAULT_NEXT


async def test_oauth_start_in_a_browser_goes_through_the_login(
    start_daemon: StartDaemon, http: aiohttp.ClientSession
) -> None:
    """What README tells the operator to open: GET /oauth/start -> login form -> POST /login ->
    303 back to /oauth/start -> 302 to MTT -> the callback stores the tokens."""
    daemon = await guarded(start_daemon, authorised=False)
    url = daemon.admin_url + "/oauth/start"
    status, _, page = await request(http, "GET", url, BROWSER)
    assert status == 401
    assert 'name="next" value="/oauth/start"' in page
    status, headers, _ = await login(daemon, http, TOKEN, "/oauth/start")
    assert (status, headers["Location"]) == (303, "/oauth/start")
    cookie = set_cookie(headers)[COOKIE].value
    status, headers, _ = await request(http, "GET", url, BROWSER | {"Cookie": f"{COOKIE}={cookie}"})
    assert status == 302
    authorize = headers["Location"]
    assert authorize.startswith(f"{daemon.sim.url}/oauth/authorize?")
    async with http.get(authorize) as resp:  # MTT's login, then its redirect to the callback
        assert (resp.status, str(resp.url).startswith(daemon.callback_url)) == (200, True)
        assert "Authorised" in await resp.text()

    async def authorised() -> bool:
        status, _, text = await request(http, "GET", daemon.admin_url + "/status", BEARER)
        return status == 200 and bool(json.loads(text)["tokens"]["authorized"])

    await eventually(authorised, "the daemon holds the new tokens")


# -- the Host check ----------------------------------------------------------------------------


async def test_host_check_on_a_loopback_listener(
    start_daemon: StartDaemon, http: aiohttp.ClientSession
) -> None:
    """A Host that is not loopback (a DNS-rebound page) is refused on every path, /healthz too,
    even with the token; localhost, 127.x.x.x and [::1] with the port pass."""
    daemon = await guarded(start_daemon)
    port = urlsplit(daemon.admin_url).port
    for path in ("/healthz", "/readyz", "/metrics", "/status", "/oauth/start", "/login"):
        for host in (
            "evil.example",
            f"evil.example:{port}",
            f"localhost.evil.example:{port}",
            "evil.localhost",
            f"127.0.0.1.nip.io:{port}",
        ):
            status, _, text = await request(
                http, "GET", daemon.admin_url + path, BEARER | {"Host": host}
            )
            assert status == 403, (path, host)
            assert "Host must be" in json.loads(text)["error"]
    for host in (
        f"localhost:{port}",
        "localhost",
        f"127.0.0.1:{port}",
        "127.0.0.2",
        f"[::1]:{port}",
    ):
        status, _, _ = await request(
            http, "GET", daemon.admin_url + "/metrics", BEARER | {"Host": host}
        )
        assert status == 200, host
    # HTTP/1.0 without any Host: refused too.
    status, _ = await raw(daemon, b"GET /healthz HTTP/1.0")
    assert status == 403


async def test_without_a_token_paths_stay_open_but_the_host_is_checked(
    start_daemon: StartDaemon, http: aiohttp.ClientSession
) -> None:
    """No ``server.admin_token`` on loopback: every path open as before (no login routes, no
    /clients), the Host check still on."""
    daemon = await start_daemon()
    for path in ("/status", "/metrics", "/healthz", "/readyz"):
        assert (await request(http, "GET", daemon.admin_url + path, BROWSER))[0] == 200, path
    status, headers, _ = await request(http, "GET", daemon.admin_url + "/oauth/start", BROWSER)
    assert status == 302
    assert headers["Location"].startswith(daemon.sim.url)
    for path in ("/login", f"/clients/{IVANOV_CLIENT}"):
        assert (await request(http, "GET", daemon.admin_url + path))[0] == 404, path
    assert (await request(http, "POST", daemon.admin_url + "/login", data={"token": "x"}))[0] == 404
    status, _, _ = await request(
        http, "GET", daemon.admin_url + "/metrics", {"Host": "evil.example"}
    )
    assert status == 403


async def test_a_non_loopback_listener_is_guarded_by_the_token_not_the_host(
    http: aiohttp.ClientSession,
) -> None:
    """Listening beyond loopback (``0.0.0.0``), any Host name is fine (a proxy's, a DNS name);
    the token still guards everything but the probes."""
    app = web.Application()
    AdminAuth(TOKEN, "0.0.0.0").install(app)

    async def ok(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    app.router.add_get("/healthz", ok)
    app.router.add_get("/status", ok)
    async with TestServer(app) as server:
        base = str(server.make_url(""))
        for host in ("admin.example.ru", "10.0.0.5:9100", "localhost"):
            named = {"Host": host}
            assert (await request(http, "GET", base + "/healthz", named))[0] == 200
            assert (await request(http, "GET", base + "/status", named))[0] == 401
            assert (await request(http, "GET", base + "/status", named | BEARER))[0] == 200


def test_loopback_host_names() -> None:
    """localhost, 127.0.0.0/8 and [::1], with or without a port; nothing else."""
    good = ["localhost", "LOCALHOST:9100", "127.0.0.1", "127.1.2.3:80", "[::1]", "[::1]:9100"]
    bad = [
        "",
        "evil.example",
        "evil.localhost",
        "localhost.",
        "127.0.0.1.nip.io",
        "::1",
        "[::1",
        "[::1]x",
        "[127.0.0.1]",
        "[localhost]",
        "127.1",
        "0.0.0.0",
        "10.0.0.1",
        "localhost:",
        "localhost:x",
        "localhost:9100:1",
        "localhost:\u0663",
        "\udcff",
    ]
    assert [h for h in good if not loopback_host(h)] == []
    assert [h for h in bad if loopback_host(h)] == []


# -- no token in the logs ----------------------------------------------------------------------


async def test_the_token_never_appears_in_the_log(
    start_daemon: StartDaemon, http: aiohttp.ClientSession
) -> None:
    """Bearer requests, a wrong and a right login, the cookie, a logout, a needs-login start:
    neither the token nor the cookie is in any line the daemon writes."""
    with captured_logs() as logs:
        daemon = await guarded(start_daemon, authorised=False)
        await request(http, "GET", daemon.admin_url + "/status", BEARER)
        await request(
            http, "GET", daemon.admin_url + "/status", {"Authorization": f"Bearer {TOKEN}x"}
        )
        await login(daemon, http, TOKEN + "x")
        status, headers, _ = await login(daemon, http, TOKEN)
        assert status == 303
        cookie = set_cookie(headers)[COOKIE].value
        await request(
            http, "GET", daemon.admin_url + "/oauth/start", {"Cookie": f"{COOKIE}={cookie}"}
        )
        await request(http, "POST", daemon.admin_url + "/logout")
    text = logs.getvalue()
    assert "admin_login" in text
    assert "needs_login" in text
    assert TOKEN not in text
    assert cookie not in text
