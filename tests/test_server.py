"""The public listener: ``POST P/events`` (bad input is never a 5xx) and the OAuth callback."""

from __future__ import annotations

import asyncio
import gzip
import json
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from structlog.testing import capture_logs

from router.mtt import auth
from router.simulator import EndpointFault, SimConfig
from router.state.memory import FileTokenStore
from tests.fixtures.daemon import (
    IVANOV_CLIENT,
    NUMBER,
    RunningDaemon,
    StartDaemon,
    daemon_sim_config,
)

MIB = 1024 * 1024


@pytest.fixture
def sim_config() -> SimConfig:
    """The simulator for daemon tests (1 s parking window)."""
    return daemon_sim_config()


def trying(call_id: str = "call-1", **info: Any) -> dict[str, Any]:
    """A parked-call ``trying`` in the document's shape."""
    call_info: dict[str, Any] = {
        "call": {"id": call_id, "tag": "tag-1"},
        "callee": {"accountId": NUMBER, "id": NUMBER, "forwarderList": []},
        "caller": {"accountId": f"{IVANOV_CLIENT}@pstn", "id": IVANOV_CLIENT, "forwarderList": []},
        "state": "trying",
        "transportId": "10.0.0.1:5073",
        "type": "incoming",
    }
    return {"event": "callNotifications", "result": {"callInfo": call_info | info}}


# -- /events: bad input ------------------------------------------------------------------------

MALFORMED = [
    pytest.param(b"", id="empty"),
    pytest.param(b"{", id="truncated"),
    pytest.param(b"{'event': 'x'}", id="single-quotes"),
    pytest.param(b"\xff\xfe\x00", id="not-utf8"),
    pytest.param(b"[" * 5000 + b"]" * 5000, id="nested-too-deep"),
    pytest.param(b'{"event": "callNotifications", "x": 1e400}', id="number-overflow"),
    pytest.param(b'{"event": "x"} trailing', id="trailing-garbage"),
]


@pytest.mark.parametrize("body", MALFORMED)
async def test_malformed_json_is_400(daemon: RunningDaemon, body: bytes) -> None:
    """A body that is not JSON: 400 saying so, counted as malformed_json."""
    status, text = await daemon.post_event(body, {"Content-Type": "application/json"})
    assert (status, text.startswith("malformed JSON")) == (400, True)
    assert daemon.sample("mtt_router_rejected_total", reason="bad_request") == 1


NOT_OBJECTS = [[], [trying()], "trying", 42, None, True]


@pytest.mark.parametrize("body", NOT_OBJECTS, ids=repr)
async def test_non_object_body_is_400(daemon: RunningDaemon, body: Any) -> None:
    """Valid JSON that is not an object: 400 with a short reason."""
    status, text = await daemon.post_event(json.dumps(body).encode())
    assert (status, text) == (400, "not a notification: body must be a JSON object\n")


WRONG_SHAPES = [
    pytest.param({}, "'event' is missing", id="no-event"),
    pytest.param({"event": 7}, "'event' is missing", id="event-not-string"),
    pytest.param({"event": "callNotifications"}, "'result' must be an object", id="no-result"),
    pytest.param(
        {"event": "callNotifications", "result": []}, "'result' must be an object", id="result-list"
    ),
    pytest.param(
        {"event": "callNotifications", "result": {}},
        "result.callInfo must be an object",
        id="no-callInfo",
    ),
    pytest.param(
        {"event": "callNotifications", "result": {"callInfo": {"state": "trying"}}},
        "result.callInfo.call.id is missing",
        id="no-call-id",
    ),
    pytest.param(trying(call_id=""), "result.callInfo.call.id is missing", id="empty-call-id"),
    pytest.param(
        {"event": "callNotifications", "result": {"callInfo": {"call": {"id": "x"}}}},
        "result.callInfo.state is missing",
        id="no-state",
    ),
    pytest.param(trying(state=3), "result.callInfo.state is missing", id="state-not-string"),
    pytest.param(trying(caller="78124241500"), "callInfo.caller must be an object", id="caller"),
    pytest.param(
        trying(callee={"forwarderList": "883140777716581"}),
        "callInfo.callee.forwarderList must be a list",
        id="forwarders-not-list",
    ),
    pytest.param(
        {"event": "vpbxNotifications", "result": {}},
        "result.eventType is missing",
        id="vpbx-no-eventType",
    ),
    pytest.param(
        {"event": "vpbxNotifications", "result": "numbersChanged"},
        "'result' must be an object",
        id="vpbx-result-string",
    ),
]


@pytest.mark.parametrize(("body", "reason"), WRONG_SHAPES)
async def test_wrong_shape_is_400_with_reason(
    daemon: RunningDaemon, body: dict[str, Any], reason: str
) -> None:
    """An object that is not a notification: 400 naming what is wrong; nothing is routed."""
    status, text = await daemon.post_event(body)
    assert (status, text) == (400, f"not a notification: {reason}\n")
    assert daemon.sample("mtt_router_rejected_total", reason="bad_request") == 1
    assert daemon.sim.requests_to("transferCall") == []
    assert daemon.sim.requests_to("terminateCall") == []


async def test_body_over_1_mib_is_413(daemon: RunningDaemon) -> None:
    """Over 1 MiB: 413, whether the length is announced or the body is streamed (chunked)."""
    big = json.dumps(trying(padding="x" * MIB)).encode()
    status, text = await daemon.post_event(big)
    assert (status, text) == (413, "body over 1 MiB\n")

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(big), 64 * 1024):
            yield big[start : start + 64 * 1024]

    async with daemon.http.post(daemon.events_url, data=chunks()) as resp:
        assert (resp.status, await resp.text()) == (413, "body over 1 MiB\n")
    assert daemon.sample("mtt_router_rejected_total", reason="too_large") == 2
    # Just under the limit is fine: a notification with a long (ignored) field.
    near = json.dumps(trying(call_id="near", padding="x" * (MIB - 1024))).encode()
    assert len(near) <= MIB
    status, _ = await daemon.post_event(near)
    assert status == 200


@pytest.mark.parametrize(
    ("body", "encoding"),
    [(b"not gzip at all", "gzip"), (b"\x00\x01\x02", "deflate")],
    ids=["gzip", "deflate"],
)
async def test_undecodable_content_encoding_is_400(
    daemon: RunningDaemon, body: bytes, encoding: str
) -> None:
    """A compressed body that does not decompress: 400, not aiohttp's 500."""
    status, _ = await daemon.post_event(body, {"Content-Encoding": encoding})
    assert status == 400


async def test_compressed_notifications_are_read(daemon: RunningDaemon) -> None:
    """A gzip body is decompressed and accepted; one that inflates past 1 MiB is 413."""
    status, text = await daemon.post_event(
        gzip.compress(json.dumps(trying(state="finished")).encode()), {"Content-Encoding": "gzip"}
    )
    assert (status, text) == (200, "ok")
    bomb = gzip.compress(json.dumps(trying(padding="x" * 3 * MIB)).encode())
    assert len(bomb) < 64 * 1024
    status, text = await daemon.post_event(bomb, {"Content-Encoding": "gzip"})
    assert (status, text) == (413, "body over 1 MiB\n")


async def test_oddly_typed_fields_are_accepted_not_500(daemon: RunningDaemon) -> None:
    """Fields of unexpected types are tolerated (read as absent): 200, never a 5xx."""
    odd = [
        trying(call_id="odd-1", duration="long", type=None, transportId=["x"]),
        trying(call_id="odd-2", caller={"id": {"nested": 1}, "forwarderList": [None, 5]}),
        trying(call_id="odd-3", caller=None, callee=None),
        {"event": "callNotifications", "result": {"callInfo": {"call": {"id": 17}, "state": "X"}}},
    ]
    for body in odd:
        status, text = await daemon.post_event(body)
        assert (status, text) == (200, "ok")


# -- /events: well-formed ----------------------------------------------------------------------


async def test_well_formed_notification_is_answered_before_the_decision(
    daemon: RunningDaemon,
) -> None:
    """200 at once: MTT never waits on our decision (here slowed by a 500 ms transferCall)."""
    daemon.sim.faults.set("transferCall", EndpointFault(latency_ms=500))
    call = daemon.sim.start_call(IVANOV_CLIENT, NUMBER)
    await asyncio.wait_for(call.wait_trying(), 5)
    assert call.notifications[0].status == 200
    # The trying was answered while the decision was still waiting on MTT.
    assert daemon.decisions() == 0
    await daemon.wait_decisions(1)
    assert daemon.decisions("transferred") == 1


async def test_unknown_events_and_states_are_counted_and_ignored(daemon: RunningDaemon) -> None:
    """An unknown event, call state or vpbx eventType: 200, counted, no command, no refresh."""
    unknown = [
        {"event": "billingNotifications", "result": {"amount": 1}},
        trying(call_id="u-1", state="ringing"),
        {"event": "vpbxNotifications", "result": {"eventType": "tariffChanged"}},
    ]
    directory_requests = len(daemon.sim.requests_to("externalNumbersInfo"))
    for body in unknown:
        assert await daemon.post_event(body) == (200, "ok")
    assert daemon.sample("mtt_router_notifications_total", event="unknown", state="") == 1
    assert (
        daemon.sample("mtt_router_notifications_total", event="callNotifications", state="unknown")
        == 1
    )
    assert (
        daemon.sample("mtt_router_notifications_total", event="vpbxNotifications", state="unknown")
        == 1
    )
    # A known event after them is handled: the unknown ones left nothing behind.
    assert await daemon.post_event(trying(call_id="u-2", state="finished")) == (200, "ok")
    assert (await daemon.status())["engine"]["inflight"] == 0
    assert daemon.decisions() == 0
    assert daemon.sim.requests_to("transferCall") == []
    assert len(daemon.sim.requests_to("externalNumbersInfo")) == directory_requests


# -- the OAuth callback ------------------------------------------------------------------------


async def _authorize_location(daemon: RunningDaemon) -> str:
    """``/oauth/start`` then MTT's authorize page: the callback URL MTT sends the browser to."""
    async with daemon.http.get(daemon.admin_url + "/oauth/start", allow_redirects=False) as resp:
        assert resp.status == 302
        authorize = resp.headers["Location"]
    async with daemon.http.get(authorize, allow_redirects=False) as resp:
        assert resp.status == 302
        return resp.headers["Location"]


async def _callback(daemon: RunningDaemon, url: str) -> tuple[int, str]:
    async with daemon.http.get(url, allow_redirects=False) as resp:
        return resp.status, await resp.text()


async def test_callback_stores_tokens_once(start_daemon: StartDaemon) -> None:
    """A good callback stores tokens (0600) and makes the daemon ready; replaying it is 400."""
    daemon = await start_daemon(authorised=False, wait_ready=False)
    location = await _authorize_location(daemon)
    assert location.startswith(daemon.callback_url + "?")
    status, page = await _callback(daemon, location)
    assert (status, "Authorised" in page) == (200, True)
    stored = await FileTokenStore(daemon.tokens_path).load()
    assert stored is not None
    assert stored.version == 1
    assert daemon.tokens_path.stat().st_mode & 0o777 == 0o600
    await daemon.wait_directory()  # the login triggered a directory refresh

    # The same state again (a reload of the page, or an attacker replaying it): refused.
    status, page = await _callback(daemon, location)
    assert (status, "unknown, expired or already used" in page) == (400, True)
    again = await FileTokenStore(daemon.tokens_path).load()
    assert again is not None
    assert again.version == 1
    assert daemon.sim.tokens.grants["authorization_code"] == 1  # no second exchange


async def test_callback_with_unknown_state_stores_nothing(start_daemon: StartDaemon) -> None:
    """A state the daemon never issued: 400, no code exchange, no tokens file, still not ready."""
    daemon = await start_daemon(authorised=False, wait_ready=False)
    location = await _authorize_location(daemon)
    forged = location.replace("state=", "state=forged")
    status, page = await _callback(daemon, forged)
    assert (status, "Authorisation failed" in page) == (400, True)
    assert not daemon.tokens_path.exists()
    assert daemon.sim.tokens.grants["authorization_code"] == 0
    code, body = await daemon.admin("/readyz")
    assert (code, body["checks"]["token"].startswith("needs login")) == (503, True)


async def test_callback_with_expired_state_stores_nothing(
    start_daemon: StartDaemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A state past its lifetime: 400 and nothing stored."""
    monkeypatch.setattr(auth, "STATE_TTL_S", 0.0)  # every state is issued already expired
    daemon = await start_daemon(authorised=False, wait_ready=False)
    location = await _authorize_location(daemon)
    status, page = await _callback(daemon, location)
    assert (status, "unknown, expired or already used" in page) == (400, True)
    assert not daemon.tokens_path.exists()
    assert daemon.sim.tokens.grants["authorization_code"] == 0


@pytest.mark.parametrize("slash", ["", "/"], ids=["path", "path-slash"])
async def test_callback_without_a_query_is_200(start_daemon: StartDaemon, slash: str) -> None:
    """A bare ``GET P`` (MTT checking the redirect URI answers): 200 naming the service."""
    daemon = await start_daemon(authorised=False, wait_ready=False)
    status, page = await _callback(daemon, daemon.callback_url + slash)
    assert (status, "OAuth callback of mtt-router" in page) == (200, True)
    assert not daemon.tokens_path.exists()


@pytest.mark.parametrize(
    "query",
    ["?code=abc", "?state=abc", "?error=access_denied&state=abc", "?foo=bar"],
    ids=["no-state", "no-code", "denied", "other"],
)
async def test_callback_without_code_and_state_is_400(
    start_daemon: StartDaemon, query: str
) -> None:
    """A callback missing its code or state, or carrying MTT's error: 400, nothing stored."""
    daemon = await start_daemon(authorised=False, wait_ready=False)
    status, page = await _callback(daemon, daemon.callback_url + query)
    assert status == 400
    assert page.startswith("<!doctype html>")
    assert not daemon.tokens_path.exists()


async def test_refused_callback_uses_up_its_state(start_daemon: StartDaemon) -> None:
    """``?error=`` with a state we issued: 400 showing MTT's words; that state is then spent."""
    daemon = await start_daemon(authorised=False, wait_ready=False)
    location = await _authorize_location(daemon)
    state = parse_qs(urlsplit(location).query)["state"][0]
    refused = (
        f"{daemon.callback_url}?error=access_denied&error_description=User+said+no&state={state}"
    )
    status, page = await _callback(daemon, refused)
    assert (status, "MTT said: User said no" in page) == (400, True)
    # MTT's good redirect with that state, arriving after all: refused, nothing exchanged.
    status, page = await _callback(daemon, location)
    assert (status, "unknown, expired or already used" in page) == (400, True)
    assert not daemon.tokens_path.exists()
    assert daemon.sim.tokens.grants["authorization_code"] == 0


async def test_callback_when_mtt_token_endpoint_is_down_is_502(start_daemon: StartDaemon) -> None:
    """MTT's token endpoint failing: 502 with a hint to retry, nothing stored, state used up."""
    daemon = await start_daemon(authorised=False, wait_ready=False)
    location = await _authorize_location(daemon)
    daemon.sim.faults.token_endpoint_down(503)
    status, page = await _callback(daemon, location)
    assert (status, "/oauth/start" in page) == (502, True)
    assert not daemon.tokens_path.exists()


async def test_oauth_start_gives_a_fresh_state_each_time(start_daemon: StartDaemon) -> None:
    """Every /oauth/start carries a new state; each can be used once, in any order."""
    daemon = await start_daemon(authorised=False, wait_ready=False)
    states = []
    for _ in range(2):
        async with daemon.http.get(
            daemon.admin_url + "/oauth/start", allow_redirects=False
        ) as resp:
            assert resp.status == 302
            states.append(parse_qs(urlsplit(resp.headers["Location"]).query)["state"][0])
    assert states[0] != states[1]
    assert min(len(s) for s in states) >= 20
    # The second one is good although the first was issued before it.
    async with daemon.http.get(
        f"{daemon.sim.url}/oauth/authorize",
        params={
            "response_type": "code",
            "client_id": daemon.config.mtt.client_id,
            "redirect_uri": daemon.config.mtt.redirect_uri,
            "scope": "https://mtt.ru/auth.tokens.readwrite",
            "state": states[1],
        },
        allow_redirects=False,
    ) as resp:
        location = resp.headers["Location"]
    status, _ = await _callback(daemon, location)
    assert status == 200
    assert daemon.tokens_path.exists()


@pytest.mark.parametrize("redirect_path", ["/mtt/", "/", ""], ids=["slash", "root", "bare-host"])
async def test_oauth_flow_with_any_redirect_uri_path(
    start_daemon: StartDaemon, redirect_path: str
) -> None:
    """The callback is served where MTT sends the browser, whatever the redirect URI's path."""
    daemon = await start_daemon(authorised=False, wait_ready=False, redirect_path=redirect_path)
    async with daemon.http.get(daemon.admin_url + "/oauth/start") as resp:
        assert (resp.status, "Authorised" in await resp.text()) == (200, True)
    assert daemon.tokens_path.exists()
    events = "/events" if redirect_path in ("/", "") else "/mtt/events"
    assert daemon.events_url == daemon.public_url + events
    assert await daemon.post_event(trying(state="finished")) == (200, "ok")


async def test_a_notification_for_another_account_is_refused(start_daemon: StartDaemon) -> None:
    """mtt.centrex_id set: a party with another centrexId and none with ours is 403 and counted
    (rejected{account}); ours, or no centrexId at all, is accepted."""
    daemon = await start_daemon(extra={"mtt": {"centrex_id": "48212857"}})
    ours = {"accountId": NUMBER, "id": NUMBER, "forwarderList": [], "centrexId": "48212857"}
    other = {**ours, "centrexId": "99999999"}
    assert (await daemon.post_event(trying("a", callee=other)))[0] == 403
    assert (await daemon.post_event(trying("b", callee=ours)))[0] == 200
    assert (await daemon.post_event(trying("c")))[0] == 200  # no centrexId anywhere
    mixed = trying("d", callee=ours, caller={"id": IVANOV_CLIENT, "centrexId": "99999999"})
    assert (await daemon.post_event(mixed))[0] == 200  # ours is among them
    assert daemon.sample("mtt_router_rejected_total", reason="account") == 1
    await daemon.wait_decisions(3)
    assert daemon.decisions() == 3  # the refused one was never decided


async def test_sources_outside_allow_from_are_refused_and_listed(
    start_daemon: StartDaemon,
) -> None:
    """allow_from without this host: 403, counted as rejected{source}, nothing decided; through
    a trusted proxy the forwarded client is judged; /status lists both sources."""
    daemon = await start_daemon(
        extra={"server": {"allow_from": ["203.0.113.0/24"], "trusted_proxies": ["127.0.0.1"]}}
    )
    assert (await daemon.post_event(trying("refused")))[0] == 403
    forwarded = {"X-Forwarded-For": "198.51.100.1, 203.0.113.7"}
    assert (await daemon.post_event(trying("allowed"), headers=forwarded))[0] == 200
    assert daemon.sample("mtt_router_rejected_total", reason="source") == 1
    await daemon.wait_decisions(1)
    sources = {s["address"]: s for s in (await daemon.status())["sources"]}
    assert (sources["127.0.0.1"]["refused"], sources["127.0.0.1"]["allowed"]) == (1, False)
    assert (sources["203.0.113.7"]["posts"], sources["203.0.113.7"]["allowed"]) == (1, True)


async def test_a_body_that_does_not_arrive_in_time_is_408(start_daemon: StartDaemon) -> None:
    """server.read_timeout_s: a body trickling in past it gets 408 and rejected{timeout}."""
    daemon = await start_daemon(extra={"server": {"read_timeout_s": 1}})
    url = urlsplit(daemon.events_url)
    reader, writer = await asyncio.open_connection(url.hostname, url.port)
    try:
        writer.write(
            f"POST {url.path} HTTP/1.1\r\nHost: {url.netloc}\r\n"
            "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{".encode()
        )
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), 10)
    finally:
        writer.close()
    assert status_line.split()[:2] == [b"HTTP/1.1", b"408"]
    assert daemon.sample("mtt_router_rejected_total", reason="timeout") == 1


@pytest.mark.parametrize(
    "sent",
    [
        b"",  # a connection that never says anything
        b"POST /mtt/events HTTP/1.1\r\nHost: x\r\n",  # headers that never end
    ],
    ids=["silent", "slow-headers"],
)
async def test_headers_that_do_not_arrive_in_time_close_the_connection(
    start_daemon: StartDaemon, sent: bytes
) -> None:
    """server.read_timeout_s covers the headers too (keep-alive timeout = read_timeout_s): the
    connection is closed, on a fresh connection and after a request on a kept-alive one."""
    daemon = await start_daemon(extra={"server": {"read_timeout_s": 1}})
    url = urlsplit(daemon.events_url)
    reader, writer = await asyncio.open_connection(url.hostname, url.port)
    try:
        writer.write(sent)
        await writer.drain()
        assert await asyncio.wait_for(reader.read(), 10) == b""  # closed by the daemon
    finally:
        writer.close()

    reader, writer = await asyncio.open_connection(url.hostname, url.port)
    try:
        body = json.dumps(trying("keep-alive-1")).encode()
        writer.write(
            f"POST {url.path} HTTP/1.1\r\nHost: {url.netloc}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        await writer.drain()
        assert (await asyncio.wait_for(reader.readline(), 10)).split()[1] == b"200"
        writer.write(sent.replace(b"/mtt/events", url.path.encode()))
        await writer.drain()
        rest = await asyncio.wait_for(reader.read(), 10)  # the rest of the 200, then EOF
        assert b"HTTP/1.1" not in rest  # no second answer: the partial request was cut off
    finally:
        writer.close()
    assert (await daemon.admin("/healthz"))[0] == 200


async def test_a_flood_of_bad_posts_is_counted_in_full_and_logged_once_a_second(
    daemon: RunningDaemon,
) -> None:
    """200 malformed posts: every one counted; the log has a line a second (with the count it
    held back), not 200."""
    loop = asyncio.get_running_loop()
    with capture_logs() as logs:
        started = loop.time()
        answers = await asyncio.gather(*(daemon.post_event(b"{not json") for _ in range(200)))
        elapsed = loop.time() - started
    assert {code for code, _ in answers} == {400}
    assert daemon.sample("mtt_router_rejected_total", reason="bad_request") == 200
    lines = [e for e in logs if e["event"] == "bad_notification"]
    assert 1 <= len(lines) <= 2 + elapsed
    assert lines[0]["kind"] == "malformed_json"
