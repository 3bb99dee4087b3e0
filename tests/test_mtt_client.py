"""MttClient against the simulator: request shapes as in MTT's document, answer variants,
deadlines under latency, which requests are retried, typed errors and metrics."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from structlog.testing import capture_logs

from router.config import MttConfig
from router.errors import (
    ClientRequestError,
    NeedsLoginError,
    ServerError,
    TokenUnavailableError,
    UpstreamConnectionError,
    UpstreamError,
    UpstreamTimeoutError,
)
from router.events import CallRef
from router.metrics import Metrics
from router.mtt._http import retry_after_s
from router.mtt.auth import TokenManager
from router.mtt.client import MttClient, make_session
from router.mtt.models import (
    ExternalNumber,
    Terminal,
    Workplace,
    parse_call_id,
    parse_numbers,
    parse_terminals,
    parse_workplaces,
)
from router.mtt.oauth import OAuthClient
from router.simulator import EndpointFault, SimConfig, Simulator, serve_simulator
from router.state.memory import MemoryTokenStore
from tests.mtt_support import REDIRECT_URI, expired_set, issued_set, json_logs, manager, sample

SLACK_S = 0.25
"""Allowed lateness past a deadline on a loaded 2-core CI box."""

# -- answers exactly as MTT's document prints them ----------------------------------------------

DOC_NUMBERS = {"result": {"total": 1, "numbersList": [{"number": "78005560251", "type": None}]}}
DOC_WORKPLACES = {
    "result": {"total": 1, "workplacesList": [{"workplace": "883140777716581", "name": ""}]}
}
DOC_TERMINALS = {
    "result": {
        "total": 1,
        "terminals_list": [{"terminal": "883140777380595", "workplace": "883140777380595"}],
    }
}
DOC_MAKE_CALL = {
    "result": {"call": {"id": "7NKe6!8fa1FMS1c6ypZdb1GSV6ZN@10.133.51.137"}, "success": 1}
}
DOC_CALL = CallRef("b9111e52e5d011e9aec7ac162d8cda20_00015D95DB072BFC_7022A1~2o", "133609")
DOC_TRANSPORT = "10.133.51.137:5070"


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    """The production session factory, closed after the test."""
    session = make_session()
    yield session
    await session.close()


@pytest.fixture
def metrics() -> Metrics:
    """Fresh metrics on their own registry."""
    return Metrics()


@pytest.fixture
async def tokens(session: aiohttp.ClientSession, sim: Simulator, metrics: Metrics) -> TokenManager:
    """A token manager holding a live token from the simulator."""
    tm = manager(session, sim, MemoryTokenStore(issued_set(sim)), metrics=metrics)
    await tm.load()
    return tm


@pytest.fixture
def client(
    session: aiohttp.ClientSession, sim: Simulator, tokens: TokenManager, metrics: Metrics
) -> MttClient:
    """The API client on the simulator."""
    return MttClient(session, sim.url, tokens, metrics)


def deadline_in(seconds: float) -> float:
    """An absolute loop-time deadline, as the engine passes it."""
    return asyncio.get_running_loop().time() + seconds


def bodies(sim: Simulator, endpoint: str) -> list[Any]:
    """Bodies of the requests the simulator received for ``endpoint``."""
    return [r.body for r in sim.requests_to(endpoint)]


# -- request shapes -----------------------------------------------------------------------------


async def test_reads_are_bearer_gets_without_body(client: MttClient, sim: Simulator) -> None:
    """The three info methods are GETs with the bearer token and no body."""
    assert await client.external_numbers() == [
        ExternalNumber("74996497803", None),
        ExternalNumber("78005560251", None),
    ]
    workplaces = await client.workplaces()
    assert workplaces[0] == Workplace("883140777716581", "Иван Иванов")
    assert await client.terminals() == [Terminal(w.workplace, w.workplace) for w in workplaces]
    for endpoint in ("externalNumbersInfo", "workPlacesInfo", "terminalsInfo"):
        [record] = sim.requests_to(endpoint)
        assert (record.method, record.path, record.auth, record.body) == (
            "GET",
            f"/{endpoint}",
            True,
            None,
        )


async def test_make_call_request_is_the_documents(client: MttClient, sim: Simulator) -> None:
    """makeCall sends {"params": {callerId, calleeId}} and returns the call id."""
    call_id = await client.make_call("883140582526566", "89219462761")
    assert bodies(sim, "makeCall") == [
        {"params": {"calleeId": "89219462761", "callerId": "883140582526566"}}
    ]
    assert sim.call(call_id) is not None


async def test_transfer_call_request_is_the_documents(client: MttClient, sim: Simulator) -> None:
    """transferCall sends {call: {id, tag}, calleeId, transportId}; the call is transferred."""
    call = sim.start_call("78124241500", "74996497803")
    await client.transfer_call(
        CallRef(call.id, call.tag), "883140582526566", call.transport_id, deadline=deadline_in(1)
    )
    assert bodies(sim, "transferCall") == [
        {
            "params": {
                "call": {"id": call.id, "tag": call.tag},
                "calleeId": "883140582526566",
                "transportId": call.transport_id,
            }
        }
    ]
    assert call.outcome == "transferred"


async def test_terminate_call_request_is_the_documents(client: MttClient, sim: Simulator) -> None:
    """terminateCall sends {call: {id, tag}, transportId}; the call goes to the PBX at once."""
    call = sim.start_call("78124241500", "74996497803")
    await client.terminate_call(
        CallRef(call.id, call.tag), call.transport_id, deadline=deadline_in(1)
    )
    assert bodies(sim, "terminateCall") == [
        {"params": {"call": {"id": call.id, "tag": call.tag}, "transportId": call.transport_id}}
    ]
    assert call.outcome == "terminated"


async def test_set_parking_request_and_bare_success_answer(
    client: MttClient, sim: Simulator
) -> None:
    """setParkingNumbers sends {numbers, isParking}; its {"success": 1} answer is accepted."""
    await client.set_parking(["74996497803"], False)
    await client.set_parking(["74996497803", "78005560251"], True)
    assert bodies(sim, "setParkingNumbers") == [
        {"params": {"numbers": ["74996497803"], "isParking": False}},
        {"params": {"numbers": ["74996497803", "78005560251"], "isParking": True}},
    ]
    assert sim.pbx.parked == {"74996497803", "78005560251"}


async def test_terminals_list_spelt_the_tables_way(
    session: aiohttp.ClientSession, metrics: Metrics
) -> None:
    """terminalsInfo answering ``terminalsList`` (the document's table) parses too."""
    async with serve_simulator(SimConfig(terminals_key="terminalsList", seed=1)) as sim:
        tm = manager(session, sim, MemoryTokenStore(issued_set(sim)))
        await tm.load()
        client = MttClient(session, sim.url, tm, metrics)
        assert len(await client.terminals()) == 4


# -- the document's answers, parsed ------------------------------------------------------------


def test_documents_answers_parse() -> None:
    """Every example answer of the document parses into typed values."""
    assert parse_numbers(DOC_NUMBERS["result"]).items == [ExternalNumber("78005560251", None)]
    assert parse_workplaces(DOC_WORKPLACES["result"]).items == [Workplace("883140777716581", "")]
    assert parse_terminals(DOC_TERMINALS["result"]).items == [
        Terminal("883140777380595", "883140777380595")
    ]
    assert parse_call_id(DOC_MAKE_CALL["result"]) == "7NKe6!8fa1FMS1c6ypZdb1GSV6ZN@10.133.51.137"


@pytest.mark.parametrize(
    "result",
    [
        {"Total": 1, "terminalsList": [{"terminal": "1", "workplace": "2"}]},
        {"total": 1, "terminals_list": [{"terminale": "1", "workplace": "2"}]},
        [{"terminal": 1, "workplace": 2}],
    ],
)
def test_terminal_variants_parse(result: Any) -> None:
    """terminalsList / terminals_list, the ``terminale`` typo and numeric ids are accepted."""
    assert parse_terminals(result).items == [Terminal("1", "2")]


def test_unreadable_entries_are_skipped_and_counted() -> None:
    """One broken entry does not lose the rest of the list."""
    parsed = parse_workplaces({"workplacesList": [{"name": "no id"}, "junk", {"workplace": "7"}]})
    assert parsed.items == [Workplace("7", "")]
    assert parsed.skipped == 2


@pytest.mark.parametrize(
    ("result", "unread"),
    [
        (DOC_NUMBERS["result"], ()),
        ({"total": 0, "numbersList": []}, ()),
        (
            {"numbersList": [{"number": "1"}], "extraNumbers": [{"number": "2"}]},
            ("unknown list key 'extraNumbers'",),
        ),
        ({"total": 3, "numbersList": [{"number": "1"}]}, ("total 3 but 1 read",)),
        (
            {"Total": 2, "numbers_list": [{"number": "1"}, {"no": "number"}]},
            ("total 2 but 1 read",),
        ),
        ({"numbersList": [{"number": "1"}, "junk"]}, ("1 entries unreadable",)),
        ({"numbersList": {"number": "1"}}, ("the list is a dict",)),
        (None, ("no list in the answer",)),
        ("78005560251", ("the answer is not a list",)),
    ],
    ids=[
        "doc",
        "empty",
        "unknown-key",
        "total",
        "Total-skipped",
        "skipped",
        "not-list",
        "null",
        "text",
    ],
)
def test_what_a_list_answer_leaves_unread(result: Any, unread: tuple[str, ...]) -> None:
    """A list key the parser does not know, a total above the items, unreadable entries."""
    parsed = parse_numbers(result)
    assert (parsed.unread, parsed.complete) == (unread, not unread)


async def test_unread_answer_is_a_warning_and_a_count(
    session: aiohttp.ClientSession, tokens: TokenManager, fake_mtt: tuple[FakeMtt, str]
) -> None:
    """An answer with a list under a key we do not know: read_numbers says so, logs, counts."""
    fake, url = fake_mtt
    answer = {
        "total": 2,
        "numbersList": [{"number": "78005560251"}],
        "tollFree": [{"number": "88005550000"}],
    }
    fake.answers["/externalNumbersInfo"] = (200, {"result": answer})
    metrics = Metrics()
    client = MttClient(session, url, tokens, metrics)
    with json_logs() as logs:
        parsed = await client.read_numbers()
    assert parsed.items == [ExternalNumber("78005560251")]
    assert parsed.unread == ("unknown list key 'tollFree'", "total 2 but 1 read")
    [line] = [json.loads(x) for x in logs.getvalue().splitlines() if "mtt_answer_unread" in x]
    assert (line["level"], line["method"], line["read"]) == ("warning", "externalNumbersInfo", 1)
    assert sample(metrics, "mtt_router_api_answers_unread_total", method="externalNumbersInfo") == 1
    assert await client.external_numbers() == parsed.items  # the plain list, counted again
    assert sample(metrics, "mtt_router_api_answers_unread_total", method="externalNumbersInfo") == 2


async def test_total_above_the_list_over_the_simulator(
    client: MttClient, sim: Simulator, metrics: Metrics
) -> None:
    """The simulator's knob for a total larger than the list: every list method says so."""
    sim.quirks.list_total_extra = 1
    parsed = await client.read_numbers()
    assert parsed.unread == ("total 3 but 2 read",)
    assert len(await client.workplaces()) == len(await client.terminals()) == 4
    for method in ("externalNumbersInfo", "workPlacesInfo", "terminalsInfo"):
        assert sample(metrics, "mtt_router_api_answers_unread_total", method=method) == 1
    sim.quirks.list_total_extra = 0
    assert (await client.read_numbers()).complete


# -- deadlines and retries ---------------------------------------------------------------------


async def test_transfer_deadline_honoured_under_latency(
    client: MttClient, sim: Simulator, metrics: Metrics
) -> None:
    """With 2 s of added latency a 300 ms deadline fails in ~300 ms, with one request sent."""
    sim.faults.set("transferCall", EndpointFault(latency_ms=2000))
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(UpstreamTimeoutError):
        await client.transfer_call(
            DOC_CALL, "883140582526566", DOC_TRANSPORT, deadline=started + 0.3
        )
    assert 0.3 <= loop.time() - started < 0.3 + SLACK_S
    assert len(sim.requests_to("transferCall")) == 1
    assert sample(metrics, "mtt_router_api_requests_total", method="transferCall", code="timeout")


async def test_read_timeout_honoured_under_latency(client: MttClient, sim: Simulator) -> None:
    """A read with timeout_s=0.3 gives up in ~300 ms (no whole-second rounding)."""
    sim.faults.set("workPlacesInfo", EndpointFault(latency_ms=2000))
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(UpstreamTimeoutError):
        await client.workplaces(timeout_s=0.3)
    assert loop.time() - started < 0.3 + SLACK_S


async def test_reads_retry_5xx(client: MttClient, sim: Simulator, metrics: Metrics) -> None:
    """Two 500s, then success: a read retries inside its deadline."""
    sim.faults.set("externalNumbersInfo", EndpointFault(status=500, count=2))
    assert len(await client.external_numbers(timeout_s=2)) == 2
    assert [r.status for r in sim.requests_to("externalNumbersInfo")] == [500, 500, 200]
    labels = {"method": "externalNumbersInfo"}
    assert sample(metrics, "mtt_router_api_requests_total", code="500", **labels) == 2
    assert sample(metrics, "mtt_router_api_requests_total", code="200", **labels) == 1
    assert sample(metrics, "mtt_router_api_request_seconds_count", **labels) == 3


async def test_reads_retry_dropped_connections(client: MttClient, sim: Simulator) -> None:
    """A connection closed without an answer is retried for a read."""
    sim.faults.set("terminalsInfo", EndpointFault(drop=True, count=1))
    assert len(await client.terminals(timeout_s=2)) == 4
    assert len(sim.requests_to("terminalsInfo")) == 2


async def test_read_retries_stop_at_the_deadline(client: MttClient, sim: Simulator) -> None:
    """A read that keeps failing with 503 gives up by its deadline with a ServerError."""
    sim.faults.set("workPlacesInfo", EndpointFault(status=503, latency_ms=40))
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(ServerError) as info:
        await client.workplaces(timeout_s=0.2)
    assert info.value.status == 503
    assert loop.time() - started < 0.2 + SLACK_S
    assert 1 <= len(sim.requests_to("workPlacesInfo")) <= 3


@pytest.mark.parametrize(
    "fault",
    [EndpointFault(status=500), EndpointFault(status=502), EndpointFault(drop=True)],
    ids=["500", "502", "drop"],
)
async def test_writes_are_not_retried(
    client: MttClient, sim: Simulator, fault: EndpointFault
) -> None:
    """transferCall/terminateCall/makeCall are sent once even after a 5xx or a broken connection."""
    for endpoint in ("transferCall", "terminateCall", "makeCall"):
        sim.faults.set(endpoint, fault)
    with pytest.raises((ServerError, UpstreamConnectionError)):
        await client.transfer_call(
            DOC_CALL, "883140582526566", DOC_TRANSPORT, deadline=deadline_in(2)
        )
    with pytest.raises((ServerError, UpstreamConnectionError)):
        await client.terminate_call(DOC_CALL, DOC_TRANSPORT, deadline=deadline_in(2))
    with pytest.raises((ServerError, UpstreamConnectionError)):
        await client.make_call("883140582526566", "89219462761", timeout_s=2)
    for endpoint in ("transferCall", "terminateCall", "makeCall"):
        assert len(sim.requests_to(endpoint)) == 1, endpoint


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port  # nothing listens there once the socket is closed


async def test_writes_retry_a_refused_connection_within_deadline(
    session: aiohttp.ClientSession, tokens: TokenManager, metrics: Metrics
) -> None:
    """A refused connect sent nothing, so even transferCall is retried, inside its deadline."""
    client = MttClient(session, f"http://127.0.0.1:{_closed_port()}", tokens, metrics)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(UpstreamConnectionError) as info:
        await client.transfer_call(DOC_CALL, "1", DOC_TRANSPORT, deadline=started + 1.0)
    assert info.value.retryable
    assert loop.time() - started < 1.0
    labels = {"method": "transferCall", "code": "connection"}
    assert sample(metrics, "mtt_router_api_requests_total", **labels) == 3


async def test_deadline_shorter_than_backoff_is_not_overrun(
    session: aiohttp.ClientSession, tokens: TokenManager
) -> None:
    """With 60 ms left no retry is started: the caller gets the error in time."""
    client = MttClient(session, f"http://127.0.0.1:{_closed_port()}", tokens, Metrics())
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(UpstreamConnectionError):
        await client.terminate_call(DOC_CALL, DOC_TRANSPORT, deadline=started + 0.06)
    assert loop.time() - started < 0.06 + SLACK_S


# -- typed errors ------------------------------------------------------------------------------


async def test_client_errors_carry_mtts_message(client: MttClient, sim: Simulator) -> None:
    """A 404 for an unknown call is a ClientRequestError with MTT's own message."""
    with pytest.raises(ClientRequestError) as info:
        await client.terminate_call(DOC_CALL, DOC_TRANSPORT, deadline=deadline_in(1))
    assert info.value.status == 404
    assert "not found" in info.value.mtt_message
    assert len(sim.requests_to("terminateCall")) == 1


async def test_no_token_means_needs_login_and_no_request(
    session: aiohttp.ClientSession, sim: Simulator
) -> None:
    """Without tokens the client raises NeedsLoginError and sends nothing."""
    tm = manager(session, sim, MemoryTokenStore())
    await tm.load()
    client = MttClient(session, sim.url, tm, Metrics())
    with pytest.raises(NeedsLoginError):
        await client.transfer_call(DOC_CALL, "1", DOC_TRANSPORT, deadline=deadline_in(1))
    assert sim.requests_to() == []


@pytest.mark.parametrize("revoked", [False, True], ids=["expired", "refused-401"])
async def test_a_failing_token_endpoint_means_not_sent(
    session: aiohttp.ClientSession, sim: Simulator, revoked: bool
) -> None:
    """The token endpoint down while a token is needed (expired, or refused with a 401): the
    command was not (re)sent, TokenUnavailableError, never the endpoint's 503 as a ServerError
    (which would read as "MTT may have applied it")."""
    store = MemoryTokenStore(issued_set(sim) if revoked else expired_set(sim))
    tm = manager(session, sim, store)
    await tm.load()
    client = MttClient(session, sim.url, tm, Metrics())
    if revoked:
        sim.revoke_access_tokens()
    sim.faults.token_endpoint_down(503)
    with pytest.raises(TokenUnavailableError) as info:
        await client.transfer_call(DOC_CALL, "1", DOC_TRANSPORT, deadline=deadline_in(2))
    assert "ServerError" in str(info.value)
    assert [r.status for r in sim.requests_to("transferCall")] == ([401] if revoked else [])


class FakeMtt:
    """A tiny upstream for answers the simulator never gives (success: 0, 404 on a path)."""

    def __init__(self) -> None:
        self.paths: list[str] = []
        self.answers: dict[str, tuple[int, Any]] = {}
        self.script: dict[str, list[tuple[int, dict[str, str]]]] = {}
        """Per path, answers given once each, in order, before ``answers``: (status, headers)."""

    async def handle(self, request: web.Request) -> web.Response:
        self.paths.append(request.path)
        if self.script.get(request.path):
            status, headers = self.script[request.path].pop(0)
            return web.json_response(
                {"error": {"message": "slow down"}}, status=status, headers=headers
            )
        status, body = self.answers.get(request.path, (404, {"error": {"message": "no route"}}))
        if isinstance(body, str):
            return web.Response(text=body, status=status, content_type="text/html")
        return web.json_response(body, status=status)


@pytest.fixture
async def fake_mtt() -> AsyncIterator[tuple[FakeMtt, str]]:
    """A FakeMtt on a free port and its base URL."""
    fake = FakeMtt()
    app = web.Application()
    app.router.add_route("*", "/{name}", fake.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield fake, f"http://{host}:{port}"
    finally:
        await runner.cleanup()


@pytest.mark.parametrize(
    "answer",
    [
        {"result": {"success": 0, "message": "call is gone"}},
        {"success": 0, "message": "call is gone"},
        {"error": {"code": 17, "message": "call is gone"}},
    ],
)
async def test_success_zero_or_error_object_is_a_client_error(
    session: aiohttp.ClientSession,
    tokens: TokenManager,
    fake_mtt: tuple[FakeMtt, str],
    answer: dict[str, Any],
) -> None:
    """A 200 saying success: 0 (or carrying an error) is refused with MTT's message."""
    fake, url = fake_mtt
    fake.answers["/transferCall"] = (200, answer)
    client = MttClient(session, url, tokens, Metrics())
    with pytest.raises(ClientRequestError) as info:
        await client.transfer_call(DOC_CALL, "1", DOC_TRANSPORT, deadline=deadline_in(1))
    assert info.value.mtt_message == "call is gone"


async def test_workplaces_falls_back_to_the_curl_examples_path(
    session: aiohttp.ClientSession, tokens: TokenManager, fake_mtt: tuple[FakeMtt, str]
) -> None:
    """If /workPlacesInfo is a 404, /workplacesInfo (the curl example) is tried and remembered."""
    fake, url = fake_mtt
    fake.answers["/workplacesInfo"] = (200, DOC_WORKPLACES)
    client = MttClient(session, url, tokens, Metrics())
    assert await client.workplaces() == [Workplace("883140777716581", "")]
    assert await client.workplaces() == [Workplace("883140777716581", "")]
    assert fake.paths == ["/workPlacesInfo", "/workplacesInfo", "/workplacesInfo"]


async def test_429_is_retried_after_retry_after_within_the_deadline(
    session: aiohttp.ClientSession, tokens: TokenManager, fake_mtt: tuple[FakeMtt, str]
) -> None:
    """A 429 (not applied) with a Retry-After that fits: the same command again, after it."""
    fake, url = fake_mtt
    fake.script["/transferCall"] = [(429, {"Retry-After": "0.2"})]
    fake.answers["/transferCall"] = (200, {"result": {"success": 1}})
    client = MttClient(session, url, tokens, Metrics())
    with capture_logs() as logs:
        await client.transfer_call(DOC_CALL, "1", DOC_TRANSPORT, deadline=deadline_in(3))
    assert fake.paths == ["/transferCall", "/transferCall"]
    [throttled] = [e for e in logs if e["event"] == "mtt_throttled"]
    assert (throttled["retry_after"], throttled["retrying"]) == ("0.2", True)


async def test_429_past_the_deadline_is_a_refusal_at_once(
    session: aiohttp.ClientSession, tokens: TokenManager, fake_mtt: tuple[FakeMtt, str]
) -> None:
    """A Retry-After beyond the deadline: no wait, no retry; the 4xx it is (next candidate)."""
    fake, url = fake_mtt
    fake.script["/transferCall"] = [(429, {"Retry-After": "30"})]
    metrics = Metrics()
    client = MttClient(session, url, tokens, metrics)
    with pytest.raises(ClientRequestError) as info:
        await client.transfer_call(DOC_CALL, "1", DOC_TRANSPORT, deadline=deadline_in(3))
    assert info.value.status == 429
    assert fake.paths == ["/transferCall"]
    counted = metrics.registry.get_sample_value(
        "mtt_router_api_requests_total", {"method": "transferCall", "code": "429"}
    )
    assert counted == 1


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("2", 2.0),
        (" 1.5 ", 1.5),
        ("-3", 0.0),
        ("Thu, 01 Jan 1970 00:00:10 GMT", 7.0),
        ("Thu, 01 Jan 1970 00:00:01 GMT", 0.0),
        ("soon", None),
        ("٣", None),
    ],
)
def test_retry_after_header_forms(header: str | None, expected: float | None) -> None:
    """Delta seconds or an HTTP date; anything else is unreadable (``None``)."""
    assert retry_after_s(header, now=3.0) == expected


async def test_make_call_without_call_id_is_an_error(
    session: aiohttp.ClientSession, tokens: TokenManager, fake_mtt: tuple[FakeMtt, str]
) -> None:
    """A makeCall answer with no call id is not silently accepted."""
    fake, url = fake_mtt
    fake.answers["/makeCall"] = (200, {"result": {"success": 1}})
    client = MttClient(session, url, tokens, Metrics())
    with pytest.raises(ServerError):
        await client.make_call("1", "2")


async def test_non_json_answer_is_a_server_error(
    session: aiohttp.ClientSession, tokens: TokenManager, fake_mtt: tuple[FakeMtt, str]
) -> None:
    """A 200 whose body is not JSON is reported, not parsed into nothing."""
    fake, url = fake_mtt
    fake.answers["/terminalsInfo"] = (200, "<html>maintenance</html>")
    client = MttClient(session, url, tokens, Metrics())
    with pytest.raises(ServerError):
        await client.terminals()


async def test_make_session_has_no_rounded_timeouts() -> None:
    """The shared session: no session-wide deadline, no whole-second rounding, bounded pool."""
    session = make_session()
    try:
        assert session.timeout.total is None
        assert session.timeout.ceil_threshold >= 3600
        assert isinstance(session.connector, aiohttp.TCPConnector)
        assert session.connector.limit == 100
    finally:
        await session.close()


async def test_nothing_is_sent_after_the_deadline(client: MttClient, sim: Simulator) -> None:
    """A command whose deadline has already passed is not sent at all."""
    await client.external_numbers()  # a pooled keep-alive connection exists now
    with pytest.raises(UpstreamTimeoutError):
        await client.transfer_call(DOC_CALL, "1", DOC_TRANSPORT, deadline=deadline_in(-0.001))
    assert sim.requests_to("transferCall") == []


@pytest.fixture
async def redirecting() -> AsyncIterator[tuple[list[str], str]]:
    """A server answering every path with 307 to ``/elsewhere``; the paths it saw, its URL."""
    seen: list[str] = []

    async def handle(request: web.Request) -> web.Response:
        seen.append(request.path)
        if request.path == "/elsewhere":
            return web.json_response({"result": {}})
        raise web.HTTPTemporaryRedirect("/elsewhere")

    app = web.Application()
    app.router.add_route("*", "/{name}", handle)
    app.router.add_route("*", "/oauth/{name}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    host, port = runner.addresses[0][:2]
    try:
        yield seen, f"http://{host}:{port}"
    finally:
        await runner.cleanup()


async def test_commands_and_token_requests_never_follow_a_redirect(
    session: aiohttp.ClientSession,
    tokens: TokenManager,
    redirecting: tuple[list[str], str],
) -> None:
    """A 307 is an answer (not applied), never followed: the token and secret stay put."""
    seen, url = redirecting
    client = MttClient(session, url, tokens, Metrics())
    with pytest.raises(ClientRequestError) as info:
        await client.transfer_call(DOC_CALL, "1", DOC_TRANSPORT, deadline=deadline_in(1))
    assert info.value.status == 307
    config = MttConfig(client_id="c", client_secret="s", redirect_uri=REDIRECT_URI, oauth_url=url)
    with pytest.raises(UpstreamError):
        await OAuthClient(session, config, Metrics()).refresh("refresh-token", timeout_s=2)
    assert seen == ["/transferCall", "/oauth/token"]
