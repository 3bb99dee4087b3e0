"""The simulator's Open API answers with the document's shapes and records what it received."""

from __future__ import annotations

import aiohttp
import pytest
from pytest_aiohttp import AiohttpClient

from router.simulator import SIM_KEY, SimConfig, Simulator, create_sim_app, serve_simulator
from tests.fixtures.sim import api_call


@pytest.fixture
def token(sim: Simulator) -> str:
    return sim.issue_tokens()["access_token"]


async def test_external_numbers_info(
    sim: Simulator, sim_http: aiohttp.ClientSession, token: str
) -> None:
    """``type`` is null, as in the document's example."""
    status, body = await api_call(sim_http, sim, "GET", "externalNumbersInfo", token)
    assert status == 200
    assert body == {
        "result": {
            "total": 2,
            "numbersList": [
                {"number": "74996497803", "type": None},
                {"number": "78005560251", "type": None},
            ],
        }
    }


@pytest.mark.parametrize("path", ["workPlacesInfo", "workplacesInfo", "WORKPLACESINFO"])
async def test_workplaces_info_in_every_spelling(
    sim: Simulator, sim_http: aiohttp.ClientSession, token: str, path: str
) -> None:
    """The document writes both workPlacesInfo and workplacesInfo."""
    status, body = await api_call(sim_http, sim, "GET", path, token)
    assert status == 200
    assert body["result"]["total"] == 4
    assert body["result"]["workplacesList"][0] == {
        "workplace": "883140777716581",
        "name": "Иван Иванов",
    }
    assert sim.requests_to()[-1].endpoint == "workPlacesInfo"


async def test_terminals_info_uses_the_examples_key(
    sim: Simulator, sim_http: aiohttp.ClientSession, token: str
) -> None:
    """``terminals_list`` like the document's example; one same-ID terminal per workplace."""
    status, body = await api_call(sim_http, sim, "GET", "terminalsInfo", token)
    assert status == 200
    assert body["result"]["total"] == 4
    assert body["result"]["terminals_list"][0] == {
        "terminal": "883140777716581",
        "workplace": "883140777716581",
    }


async def test_terminals_key_is_configurable(sim_http: aiohttp.ClientSession) -> None:
    """``terminals_key="terminalsList"`` gives the table's spelling instead."""
    async with serve_simulator(SimConfig(terminals_key="terminalsList")) as sim:
        token = sim.issue_tokens()["access_token"]
        _, body = await api_call(sim_http, sim, "GET", "terminalsInfo", token)
    assert "terminalsList" in body["result"]
    assert "terminals_list" not in body["result"]


async def test_set_parking_numbers(
    sim: Simulator, sim_http: aiohttp.ClientSession, token: str
) -> None:
    """Answers ``{"success": 1}`` with no ``result``; numbers match in any spelling."""
    params = {"numbers": ["84996497803"], "isParking": False}
    assert await api_call(sim_http, sim, "POST", "setParkingNumbers", token, params) == (
        200,
        {"success": 1},
    )
    assert sim.pbx.parked == {"78005560251"}
    params = {"numbers": ["+7 499 649-78-03"], "isParking": True}
    assert (await api_call(sim_http, sim, "POST", "setParkingNumbers", token, params))[0] == 200
    assert sim.pbx.parked == {"74996497803", "78005560251"}
    # The request is recorded as sent, so tests can compare it with the document's example.
    record = sim.requests_to("setParkingNumbers")[-1]
    assert record.body == {"params": params}
    assert (record.method, record.path, record.auth, record.status) == (
        "POST",
        "/setParkingNumbers",
        True,
        200,
    )


@pytest.mark.parametrize(
    ("name", "params", "status"),
    [
        ("setParkingNumbers", {"numbers": ["880023213"], "isParking": True}, 400),
        ("setParkingNumbers", {"numbers": ["74996497803"], "isParking": "yes"}, 400),
        ("setParkingNumbers", {"numbers": []}, 400),
        ("makeCall", {"callerId": "123", "calleeId": "89219462761"}, 400),
        ("makeCall", {"callerId": "883140777716581"}, 400),
        ("transferCall", {"call": {"id": "x", "tag": "y"}, "transportId": "z"}, 400),
        ("transferCall", {"call": "x", "calleeId": "883140777716581", "transportId": "z"}, 400),
        (
            "transferCall",
            {"call": {"id": "x", "tag": "y"}, "calleeId": "883140777716581", "transportId": "z"},
            404,
        ),
        ("terminateCall", {"call": {"id": "x", "tag": "y"}, "transportId": "z"}, 404),
        ("terminateCall", {"call": {"id": "x"}, "transportId": "z"}, 400),
    ],
)
async def test_bad_params_are_refused_with_a_json_message(
    sim: Simulator,
    sim_http: aiohttp.ClientSession,
    token: str,
    name: str,
    params: dict[str, object],
    status: int,
) -> None:
    """Bad params -> 400, an unknown call -> 404, always ``{"error": {"code", "message"}}``."""
    got_status, body = await api_call(sim_http, sim, "POST", name, token, params)
    assert got_status == status
    assert body["error"]["code"] == status
    assert body["error"]["message"]


async def test_body_must_be_params_object(
    sim: Simulator, sim_http: aiohttp.ClientSession, token: str
) -> None:
    """Not JSON or no ``params`` -> 400; wrong HTTP method -> 405; no such method -> 404."""
    headers = {"Authorization": f"Bearer {token}"}
    url = f"{sim.url}/setParkingNumbers"
    async with sim_http.post(url, data=b"{not json", headers=headers) as resp:
        assert resp.status == 400
    async with sim_http.post(url, json={"numbers": []}, headers=headers) as resp:
        assert resp.status == 400
    async with sim_http.get(url, headers=headers) as resp:
        assert resp.status == 405
    async with sim_http.get(f"{sim.url}/noSuchMethod", headers=headers) as resp:
        assert resp.status == 404
        assert (await resp.json())["error"]["code"] == 404


async def test_make_call_answer_has_the_documents_shape(
    sim: Simulator, sim_http: aiohttp.ClientSession, token: str
) -> None:
    """``{"result": {"call": {"id"}, "success": 1}}``; the id is the notifications' call id."""
    params = {"calleeId": "89219462761", "callerId": "883140582526566"}
    status, body = await api_call(sim_http, sim, "POST", "makeCall", token, params)
    assert status == 200
    assert body == {"result": {"call": {"id": body["result"]["call"]["id"]}, "success": 1}}
    call = sim.call(body["result"]["call"]["id"])
    assert call is not None
    assert (call.type, call.caller, call.callee) == ("outgoing", "883140582526566", "89219462761")


async def test_control_endpoints_show_requests_and_stats(
    sim: Simulator, sim_http: aiohttp.ClientSession, token: str
) -> None:
    """``/_sim/requests`` lists what MTT received; ``/_sim/stats`` counts it."""
    await api_call(sim_http, sim, "GET", "externalNumbersInfo", token)
    await api_call(sim_http, sim, "GET", "externalNumbersInfo", None)
    async with sim_http.get(f"{sim.url}/_sim/requests?endpoint=externalNumbersInfo") as resp:
        rows = (await resp.json())["requests"]
    assert [(r["auth"], r["status"]) for r in rows] == [(True, 200), (False, 401)]
    async with sim_http.get(f"{sim.url}/_sim/stats") as resp:
        stats = await resp.json()
    assert stats["requests"]["by_endpoint"] == {"externalNumbersInfo": 2}
    assert stats["grants"]["direct"] == 1
    async with sim_http.post(f"{sim.url}/_sim/tokens") as resp:
        assert set(await resp.json()) == {
            "access_token",
            "expires_in",
            "refresh_token",
            "scope",
            "token_type",
        }


async def test_app_factory_cleans_up_on_shutdown(aiohttp_client: AiohttpClient) -> None:
    """Through create_sim_app: the webhook session opens with the app; stopping it ends timers."""
    app = create_sim_app(SimConfig(talk_ms=60_000, parking_window_s=60))
    client = await aiohttp_client(app)
    sim = app[SIM_KEY]
    sim.url = str(client.make_url("")).rstrip("/")
    token = sim.issue_tokens()["access_token"]
    async with client.get("/terminalsInfo", headers={"Authorization": f"Bearer {token}"}) as resp:
        assert resp.status == 200
    call = await sim.place_call("78124241500", "74996497803")
    assert call.notifications[0].error == "no webhook URL set"
    timer = call.timer  # a local: closing the client clears the attribute
    assert timer is not None
    await client.close()
    assert sim.engine.live_calls() == 0
    assert call.timer is None
    assert call.outcome is None
    # Waiters are released, not left hanging.
    await call.wait_done()
    with pytest.raises(RuntimeError, match="stopped"):
        await call.wait_outcome()
