"""``/_sim/*``: the control API that `mtt-router simulate` users drive the simulator with."""

from __future__ import annotations

import aiohttp
import pytest

from router.simulator import Simulator
from tests.fixtures.sim import WebhookSink

IVANOV = "883140777716581"


async def test_workplaces_show_answer_behaviour_and_presence(
    sim: Simulator, sim_http: aiohttp.ClientSession
) -> None:
    """GET /_sim/workplaces lists names, answer_after_ms, terminals and busy; {} restores the
    default."""
    async with sim_http.post(f"{sim.url}/_sim/workplaces/{IVANOV}", json={"answer_after_ms": 7}):
        pass
    sim.pbx.engage(IVANOV)
    async with sim_http.get(f"{sim.url}/_sim/workplaces") as resp:
        rows = (await resp.json())["workplaces"]
    assert rows[0] == {
        "workplace": IVANOV,
        "name": "Иван Иванов",
        "answer_after_ms": 7,
        "decline_after_ms": None,
        "terminals": [IVANOV],
        "answering_terminal": IVANOV,
        "busy": True,
    }
    async with sim_http.post(f"{sim.url}/_sim/workplaces/{IVANOV}") as resp:
        assert (await resp.json())["answer_after_ms"] == sim.config.answer_after_ms
    async with sim_http.post(f"{sim.url}/_sim/workplaces/nope", json={}) as resp:
        assert resp.status == 404


async def test_a_workplace_can_decline(sim: Simulator, sim_http: aiohttp.ClientSession) -> None:
    """decline_after_ms: the workplace declines ringing calls after that long; null or {} stops
    it; answer_after_ms stays as it was."""
    url = f"{sim.url}/_sim/workplaces/{IVANOV}"
    async with sim_http.post(url, json={"decline_after_ms": 5}) as resp:
        assert await resp.json() == {
            "workplace": IVANOV,
            "answer_after_ms": sim.config.answer_after_ms,
            "decline_after_ms": 5,
        }
    assert sim.pbx.decline_after_ms(IVANOV) == 5
    async with sim_http.post(url, json={"decline_after_ms": None}) as resp:
        assert (await resp.json())["decline_after_ms"] is None
    sim.set_decline(IVANOV, 5)
    async with sim_http.post(url, json={}) as resp:
        assert (await resp.json())["decline_after_ms"] is None
    async with sim_http.post(url, json={"decline_after_ms": -1}) as resp:
        assert resp.status == 400


async def test_numbers_and_vpbx_events(
    sim: Simulator, sim_http: aiohttp.ClientSession, webhook_sink: WebhookSink
) -> None:
    """POST /_sim/numbers replaces the numbers and notifies; /_sim/vpbx sends any eventType."""
    async with sim_http.get(f"{sim.url}/_sim/webhook") as resp:
        assert await resp.json() == {"url": None}
    async with sim_http.post(f"{sim.url}/_sim/webhook", json={"url": webhook_sink.url}):
        pass
    async with sim_http.post(f"{sim.url}/_sim/numbers", json={"numbers": ["78121234567"]}) as resp:
        assert resp.status == 200
    assert sim.pbx.numbers == ["78121234567"]
    assert sim.pbx.parked == set()
    async with sim_http.post(f"{sim.url}/_sim/vpbx", json={"eventType": "workplacesChanged"}) as r:
        assert (await r.json())["notification"]["status"] == 200
    assert [b["result"]["eventType"] for b in webhook_sink.received] == [
        "numbersChanged",
        "workplacesChanged",
    ]


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/_sim/calls", b"[1]"),
        ("POST", "/_sim/calls", b"{bad"),
        ("POST", "/_sim/calls", b'{"caller": "1", "callee": "74996497803", "forwarders": "x"}'),
        ("POST", "/_sim/calls", b'{"caller": "1", "callee": "74996497803", "talk_ms": -1}'),
        ("POST", "/_sim/calls", b'{"caller": "1", "callee": "74996497803", "answer": [1]}'),
        ("POST", "/_sim/calls", b'{"caller": 1, "callee": "74996497803"}'),
        ("PUT", "/_sim/webhook", b'{"url": "ftp://x"}'),
        ("POST", f"/_sim/workplaces/{IVANOV}", b'{"answer_after_ms": "soon"}'),
        ("POST", "/_sim/numbers", b'{"numbers": []}'),
        ("POST", "/_sim/vpbx", b"{}"),
    ],
)
async def test_bad_control_requests_get_400(
    sim: Simulator, sim_http: aiohttp.ClientSession, method: str, path: str, body: bytes
) -> None:
    """Malformed control requests are refused with a JSON reason and change nothing."""
    headers = {"Content-Type": "application/json"}
    async with sim_http.request(method, f"{sim.url}{path}", data=body, headers=headers) as resp:
        assert resp.status == 400
        assert (await resp.json())["error"]
    assert sim.calls() == []


async def test_place_call_without_waiting(sim: Simulator, sim_http: aiohttp.ClientSession) -> None:
    """``wait: false`` answers before trying is delivered."""
    body = {"caller": "78124241500", "callee": "74996497803", "wait": False}
    async with sim_http.post(f"{sim.url}/_sim/calls", json=body) as resp:
        assert resp.status == 201
        record = (await resp.json())["call"]
    assert record["notifications"][0]["status"] is None
    call = sim.call(record["id"])
    assert call is not None
    await call.wait_trying()
    assert call.notifications[0].error == "no webhook URL set"
