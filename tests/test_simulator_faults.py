"""Fault knobs: latency, fixed statuses, 401 storms, token endpoint down, dropped connections,
faults after the work is done, Retry-After."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import pytest

from router.callmodel import CommandClass
from router.simulator import EndpointFault, Simulator
from router.simulator.faults import canonical_endpoint
from tests.fixtures.sim import Body, WebhookSink, api_call

CLIENT = "78124241500"
NUMBER = "74996497803"
PETROVA, SIDOROV = "883140582526566", "883140777380595"


@pytest.fixture
def token(sim: Simulator) -> str:
    return sim.issue_tokens()["access_token"]


async def transfer(
    http: aiohttp.ClientSession, sim: Simulator, token: str, trying: Body, workplace: str
) -> tuple[int, Any]:
    """transferCall of the call ``trying`` announced, to ``workplace``."""
    params: Body = {
        "call": {"id": trying["call"]["id"], "tag": trying["call"]["tag"]},
        "transportId": trying["transportId"],
        "calleeId": workplace,
    }
    return await api_call(http, sim, "POST", "transferCall", token, params)


async def refresh(
    http: aiohttp.ClientSession, sim: Simulator, refresh_token: str
) -> tuple[int, dict[str, str]]:
    form = {
        "client_id": sim.config.client_id,
        "client_secret": sim.config.client_secret,
        "grant_type": "refresh_token",
        "refresh_token": refresh_token,
    }
    async with http.post(f"{sim.url}/oauth/token", data=form) as resp:
        return resp.status, await resp.json()


async def test_latency_per_endpoint(
    sim: Simulator, sim_http: aiohttp.ClientSession, token: str
) -> None:
    """Latency applies to the named endpoint only."""
    # 0.6 s: far above what an unfaulted request takes even on a loaded machine.
    sim.faults.set("transferCall", EndpointFault(latency_ms=600))
    started = time.monotonic()
    assert (await api_call(sim_http, sim, "GET", "externalNumbersInfo", token))[0] == 200
    assert time.monotonic() - started < 0.6
    params = {"call": {"id": "x", "tag": "y"}, "calleeId": "883140777716581", "transportId": "z"}
    started = time.monotonic()
    assert (await api_call(sim_http, sim, "POST", "transferCall", token, params))[0] == 404
    assert time.monotonic() - started >= 0.6


async def test_fixed_status_with_count(
    sim: Simulator, sim_http: aiohttp.ClientSession, token: str
) -> None:
    """A status fault answers that status (JSON error) for ``count`` requests, then clears."""
    sim.faults.set("workplacesinfo", EndpointFault(status=503, count=2))
    for _ in range(2):
        status, body = await api_call(sim_http, sim, "GET", "workPlacesInfo", token)
        assert (status, body["error"]["code"]) == (503, 503)
    assert (await api_call(sim_http, sim, "GET", "workPlacesInfo", token))[0] == 200
    assert sim.faults.endpoints == {}


async def test_error_rate(sim: Simulator, sim_http: aiohttp.ClientSession, token: str) -> None:
    """``rate`` makes a fraction of requests fail (seeded, so the run is reproducible)."""
    sim.faults.set("*", EndpointFault(status=500, rate=0.5))
    statuses = [
        (await api_call(sim_http, sim, "GET", "terminalsInfo", token))[0] for _ in range(40)
    ]
    assert set(statuses) == {200, 500}


async def test_401_storm(sim: Simulator, sim_http: aiohttp.ClientSession, token: str) -> None:
    """The next N API requests get 401 whatever the token; OAuth is not affected."""
    async with sim_http.post(f"{sim.url}/_sim/faults", json={"storm_401": 2}) as resp:
        assert (await resp.json())["storm_401"] == 2
    for _ in range(2):
        assert (await api_call(sim_http, sim, "GET", "externalNumbersInfo", token))[0] == 401
    assert (await api_call(sim_http, sim, "GET", "externalNumbersInfo", token))[0] == 200


async def test_revoke_and_expire_access_tokens(
    sim: Simulator, sim_http: aiohttp.ClientSession, token: str
) -> None:
    """Revoking or expiring access tokens makes the API answer 401 until a refresh."""
    tokens = sim.issue_tokens()
    body = {"revoke_access_tokens": True}
    async with sim_http.post(f"{sim.url}/_sim/faults", json=body) as resp:
        assert (await resp.json())["done"] == {"revoked_access_tokens": 2}
    assert (await api_call(sim_http, sim, "GET", "externalNumbersInfo", token))[0] == 401
    status, fresh = await refresh(sim_http, sim, tokens["refresh_token"])
    assert status == 200
    live = fresh["access_token"]
    assert (await api_call(sim_http, sim, "GET", "externalNumbersInfo", live))[0] == 200
    async with sim_http.post(f"{sim.url}/_sim/faults", json={"expire_access_tokens": True}):
        pass
    assert (await api_call(sim_http, sim, "GET", "externalNumbersInfo", live))[0] == 401


async def test_revoke_refresh_tokens(sim: Simulator, sim_http: aiohttp.ClientSession) -> None:
    """After revoking refresh tokens a refresh gets invalid_grant."""
    tokens = sim.issue_tokens()
    async with sim_http.post(f"{sim.url}/_sim/faults", json={"revoke_refresh_tokens": True}):
        pass
    status, body = await refresh(sim_http, sim, tokens["refresh_token"])
    assert (status, body["error"]) == (400, "invalid_grant")


async def test_token_endpoint_down(sim: Simulator, sim_http: aiohttp.ClientSession) -> None:
    """Token endpoint down: 503 (or a dropped connection) until healed; the API still works."""
    tokens = sim.issue_tokens()
    async with sim_http.post(f"{sim.url}/_sim/faults", json={"token_endpoint_down": 503}):
        pass
    status, body = await refresh(sim_http, sim, tokens["refresh_token"])
    assert (status, body["error"]) == (503, "temporarily_unavailable")
    access = tokens["access_token"]
    assert (await api_call(sim_http, sim, "GET", "externalNumbersInfo", access))[0] == 200
    sim.faults.token_endpoint_down("drop")
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await refresh(sim_http, sim, tokens["refresh_token"])
    sim.faults.token_endpoint_down(None)
    # The refresh token was never consumed while the endpoint was down.
    assert (await refresh(sim_http, sim, tokens["refresh_token"]))[0] == 200
    assert sim.requests_to("token")[1].status == 0


async def test_dropped_connection_on_an_api_endpoint(
    sim: Simulator, sim_http: aiohttp.ClientSession, token: str
) -> None:
    """``drop`` closes the connection without an answer, until the fault is removed."""
    body = {"endpoints": {"externalNumbersInfo": {"drop": True}}}
    async with sim_http.post(f"{sim.url}/_sim/faults", json=body) as resp:
        assert resp.status == 200
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await api_call(sim_http, sim, "GET", "externalNumbersInfo", token)
    sim.faults.set("externalNumbersInfo", None)
    assert (await api_call(sim_http, sim, "GET", "externalNumbersInfo", token))[0] == 200
    # aiohttp retries a GET once on a reused connection: both attempts were dropped.
    statuses = [r.status for r in sim.requests_to("externalNumbersInfo")]
    assert statuses[-1] == 200
    assert set(statuses[:-1]) == {0}


async def test_401_storm_refuses_a_freshly_refreshed_token_too(
    sim: Simulator, sim_http: aiohttp.ClientSession
) -> None:
    """``storm_401`` counts requests, not tokens: a token refreshed mid-storm gets 401 as well."""
    tokens = sim.issue_tokens()
    sim.faults.storm_401 = 2
    assert (await api_call(sim_http, sim, "GET", "terminalsInfo", tokens["access_token"]))[0] == 401
    status, fresh = await refresh(sim_http, sim, tokens["refresh_token"])
    assert status == 200  # OAuth is not part of the storm
    assert (await api_call(sim_http, sim, "GET", "terminalsInfo", fresh["access_token"]))[0] == 401
    assert (await api_call(sim_http, sim, "GET", "terminalsInfo", fresh["access_token"]))[0] == 200


async def test_a_status_after_apply_does_the_work_first(
    sim: Simulator, sim_http: aiohttp.ClientSession, webhook_sink: WebhookSink, token: str
) -> None:
    """``after_apply``: the transfer is carried out, then answered 502 (a gateway failing after
    MTT did it). The daemon cannot know: the call is maybe applied, and a second transfer is no
    re-route of its own but a violation."""
    sim.webhook_url = webhook_sink.url
    body = {"endpoints": {"transferCall": {"status": 502, "after_apply": True, "count": 1}}}
    async with sim_http.post(f"{sim.url}/_sim/faults", json=body) as resp:
        shown = (await resp.json())["endpoints"]["transferCall"]
    assert (shown["status"], shown["after_apply"], shown["retry_after_s"]) == (502, True, None)
    sim.set_answer(PETROVA, None)  # rings unanswered: without the fault a re-route would be fine
    call = await sim.place_call(CLIENT, NUMBER)
    trying = await webhook_sink.wait_state(call.id, "trying")
    assert (await transfer(sim_http, sim, token, trying, PETROVA))[0] == 502
    assert call.outcome == "transferred"
    first = call.commands[0]
    assert (first.accepted, first.refusal, first.status, first.verdict) == (True, None, 502, "fine")
    assert call.maybe_applied
    assert sim.requests_to("transferCall")[0].status == 502
    await webhook_sink.wait_state(call.id, "showing")
    assert (await transfer(sim_http, sim, token, trying, SIDOROV))[0] == 200
    assert call.commands[1].verdict is CommandClass.VIOLATION
    assert [v.call_id for v in sim.violations()] == [call.id]


async def test_a_drop_after_apply_does_the_work_then_closes(
    sim: Simulator, sim_http: aiohttp.ClientSession, webhook_sink: WebhookSink, token: str
) -> None:
    """``drop`` with ``after_apply``: carried out, then the connection closes without an answer."""
    sim.webhook_url = webhook_sink.url
    sim.faults.set("transferCall", EndpointFault(drop=True, after_apply=True, count=1))
    call = await sim.place_call(CLIENT, NUMBER)
    trying = await webhook_sink.wait_state(call.id, "trying")
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await transfer(sim_http, sim, token, trying, PETROVA)
    assert (call.outcome, call.maybe_applied) == ("transferred", True)
    assert [(c.accepted, c.status) for c in call.commands] == [(True, 0)]
    assert sim.requests_to("transferCall")[0].status == 0
    assert sim.faults.endpoints == {}


async def test_latency_after_apply_is_a_slow_answer(
    sim: Simulator, sim_http: aiohttp.ClientSession, webhook_sink: WebhookSink, token: str
) -> None:
    """``latency_ms`` with ``after_apply``: the work is done at once, only the answer waits."""
    sim.webhook_url = webhook_sink.url
    sim.faults.set("transferCall", EndpointFault(latency_ms=2000, after_apply=True, count=1))
    call = await sim.place_call(CLIENT, NUMBER)
    trying = await webhook_sink.wait_state(call.id, "trying")
    answer = asyncio.create_task(transfer(sim_http, sim, token, trying, PETROVA))
    assert await asyncio.wait_for(call.wait_outcome(), 5.0) == "transferred"
    assert not answer.done()  # transferred, still not answered
    assert (await answer)[0] == 200
    assert not call.maybe_applied  # a 2xx, late: the daemon may still have learnt it


async def test_retry_after_goes_with_the_status(
    sim: Simulator, sim_http: aiohttp.ClientSession, token: str
) -> None:
    """``retry_after_s`` is sent as ``Retry-After`` (whole seconds as such, a fraction as it is)."""
    headers = {"Authorization": f"Bearer {token}"}
    for seconds, shown in ((2, "2"), (0.5, "0.5"), (0, "0")):
        sim.faults.set("terminalsInfo", EndpointFault(status=429, retry_after_s=seconds, count=1))
        async with sim_http.get(f"{sim.url}/terminalsInfo", headers=headers) as resp:
            assert (resp.status, resp.headers.get("Retry-After")) == (429, shown)
    sim.faults.set("terminalsInfo", EndpointFault(status=503, count=1))
    async with sim_http.get(f"{sim.url}/terminalsInfo", headers=headers) as resp:
        assert (resp.status, resp.headers.get("Retry-After")) == (503, None)


@pytest.mark.parametrize(
    "body",
    [
        {"endpoints": {"nope": {"status": 500}}},
        {"endpoints": {"makeCall": {"status": 42}}},
        {"endpoints": {"makeCall": {"rate": 2}}},
        {"endpoints": {"makeCall": {"bogus": 1}}},
        {"endpoints": {"makeCall": 5}},
        {"endpoints": []},
        {"storm_401": -1},
        {"endpoints": {"makeCall": {"retry_after_s": 1}}},
        {"endpoints": {"makeCall": {"status": 429, "retry_after_s": -1}}},
        {"endpoints": {"makeCall": {"status": 429, "retry_after_s": "1"}}},
        {"endpoints": {"makeCall": {"status": 502, "after_apply": "yes"}}},
        {"token_endpoint_down": "sometimes"},
    ],
)
async def test_bad_fault_settings_are_refused(
    sim: Simulator, sim_http: aiohttp.ClientSession, body: dict[str, object]
) -> None:
    """Invalid knobs get 400 and change nothing."""
    async with sim_http.post(f"{sim.url}/_sim/faults", json=body) as resp:
        assert resp.status == 400
    assert sim.faults.to_json() == {"endpoints": {}, "storm_401": 0, "duplicate_trying": 0}


async def test_faults_are_readable_and_clearable(
    sim: Simulator, sim_http: aiohttp.ClientSession
) -> None:
    """GET shows the settings in the shape POST takes; DELETE clears them."""
    body = {
        "endpoints": {
            "MAKECALL": {"latency_ms": 5},
            "transferCall": {"status": 429, "retry_after_s": 1.5, "after_apply": False},
        },
        "duplicate_trying": 1,
    }
    async with sim_http.post(f"{sim.url}/_sim/faults", json=body):
        pass
    async with sim_http.get(f"{sim.url}/_sim/faults") as resp:
        shown = await resp.json()
    assert shown["endpoints"]["makeCall"]["latency_ms"] == 5
    assert shown["endpoints"]["transferCall"]["retry_after_s"] == 1.5
    # What GET shows, POST takes back unchanged.
    async with sim_http.post(f"{sim.url}/_sim/faults", json={"clear": True, **shown}) as resp:
        assert {k: v for k, v in (await resp.json()).items() if k != "done"} == shown
    assert shown["duplicate_trying"] == 1
    async with sim_http.delete(f"{sim.url}/_sim/faults") as resp:
        assert await resp.json() == {"endpoints": {}, "storm_401": 0, "duplicate_trying": 0}


def test_canonical_endpoint_names() -> None:
    """Endpoint names match case-insensitively and come back in the document's spelling."""
    assert canonical_endpoint("workplacesinfo") == "workPlacesInfo"
    assert canonical_endpoint("TOKEN") == "token"
    with pytest.raises(ValueError, match="unknown endpoint"):
        canonical_endpoint("nope")
    with pytest.raises(ValueError, match="latency_ms"):
        EndpointFault(latency_ms=-1)
    with pytest.raises(ValueError, match="count"):
        EndpointFault(count=0)
