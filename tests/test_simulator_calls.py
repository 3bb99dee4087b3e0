"""Simulated calls: the parking window, transfers, PBX routing, makeCall, forwarded legs."""

from __future__ import annotations

import time
from typing import Any

import aiohttp
import pytest

from router.callmodel import CommandReason, freed_workplace, is_parked_trying, workplace_of
from router.events import CallEvent, parse_event
from router.simulator import (
    CallOutcome,
    SimCall,
    SimConfig,
    Simulator,
    serve_simulator,
)
from tests.fixtures.sim import Body, WebhookSink, api_call

CLIENT = "78124241500"
NUMBER = "74996497803"
IVANOV, PETROVA, SIDOROV = "883140777716581", "883140582526566", "883140777380595"


@pytest.fixture
def token(sim: Simulator, webhook_sink: WebhookSink) -> str:
    sim.webhook_url = webhook_sink.url
    return sim.issue_tokens()["access_token"]


async def command(
    http: aiohttp.ClientSession,
    sim: Simulator,
    token: str,
    trying: Body,
    workplace: str | None = None,
) -> tuple[int, Any]:
    """transferCall (to ``workplace``) or terminateCall, built from the trying notification."""
    params: Body = {
        "call": {"id": trying["call"]["id"], "tag": trying["call"]["tag"]},
        "transportId": trying["transportId"],
    }
    if workplace is None:
        return await api_call(http, sim, "POST", "terminateCall", token, params)
    params["calleeId"] = workplace
    return await api_call(http, sim, "POST", "transferCall", token, params)


def parsed(info: Body) -> CallEvent:
    event = parse_event({"event": "callNotifications", "result": {"callInfo": info}})
    assert isinstance(event, CallEvent)
    return event


async def test_trying_has_the_documents_shape(
    sim: Simulator, webhook_sink: WebhookSink, token: str
) -> None:
    """Incoming trying: @pstn caller without centrexId, displayName "", startTime, 10.133.x.x."""
    call = await sim.place_call(CLIENT, NUMBER)
    trying = await webhook_sink.wait_state(call.id, "trying")
    assert trying == {
        "call": {"id": call.id, "tag": call.tag},
        "callee": {
            "accountId": NUMBER,
            "centrexId": "67821426",
            "displayId": NUMBER,
            "displayName": "",
            "forwarderList": [],
            "id": NUMBER,
        },
        "caller": {
            "accountId": f"{CLIENT}@pstn",
            "displayId": CLIENT,
            "forwarderList": [],
            "id": CLIENT,
        },
        "startTime": call.start_time,
        "state": "trying",
        "transportId": call.transport_id,
        "type": "incoming",
    }
    assert call.transport_id.startswith("10.133.")
    assert call.transport_id.endswith(":5073")
    assert len(call.start_time) == len("2020-06-02 11:18:16")
    assert is_parked_trying(parsed(trying), {NUMBER, "78005560251"})
    assert webhook_sink.paths == ["/events"]


async def test_transfer_inside_the_window(
    sim: Simulator, sim_http: aiohttp.ClientSession, webhook_sink: WebhookSink, token: str
) -> None:
    """transferCall in time: showing -> connected -> finished -> recorded at the workplace."""
    call = await sim.place_call(CLIENT, NUMBER)
    trying = await webhook_sink.wait_state(call.id, "trying")
    assert await command(sim_http, sim, token, trying, PETROVA) == (200, {"result": {"success": 1}})
    assert await call.wait_outcome() is CallOutcome.TRANSFERRED
    await call.wait_done()
    assert webhook_sink.states(call.id) == [
        "trying",
        "showing",
        "connected",
        "finished",
        "recorded",
    ]
    infos = webhook_sink.for_call(call.id)
    assert [workplace_of(parsed(i)) for i in infos[1:4]] == [PETROVA] * 3
    finished, recorded = infos[3], infos[4]
    assert finished["reasonCode"] is None
    assert "startTime" not in finished
    assert isinstance(finished["duration"], int)
    assert freed_workplace(parsed(finished)) == PETROVA
    assert set(recorded) == {"accountId", "call", "state", "urlRecord"}
    assert recorded["call"] == {"id": call.id}
    assert recorded["accountId"] == PETROVA
    assert recorded["urlRecord"].endswith(".mp3")
    assert call.command is not None
    assert (call.command.kind, call.command.workplace) == ("transfer", PETROVA)
    assert (call.command.verdict, sim.violations()) == ("fine", [])
    assert call.workplace == PETROVA
    latency = call.decision_latency_s
    assert latency is not None
    assert 0 < latency < sim.config.parking_window_s
    assert not sim.pbx.is_busy(PETROVA)


async def test_transfer_after_the_window_is_carried_out_and_a_violation(
    sim: Simulator, sim_http: aiohttp.ClientSession, webhook_sink: WebhookSink, token: str
) -> None:
    """After the window the PBX has routed the call; a late transfer moves the live call (MTT's
    document never says it fails) and is recorded as a violation."""
    call = await sim.place_call(CLIENT, NUMBER, talk_ms=60_000)
    trying = await webhook_sink.wait_state(call.id, "trying")
    assert await call.wait_outcome() is CallOutcome.PBX_TIMEOUT
    assert call.outcome_at is not None
    assert call.trying_sent_at is not None
    assert call.outcome_at - call.trying_sent_at >= sim.config.parking_window_s
    await webhook_sink.wait_state(call.id, "connected")  # the PBX's own route: ivanov answered
    assert await command(sim_http, sim, token, trying, PETROVA) == (200, {"result": {"success": 1}})
    assert call.late
    [late] = call.commands
    assert (late.accepted, late.reason, late.verdict) == (True, "after_window", "violation")
    assert [(v.call_id, v.kind, v.reason) for v in sim.violations()] == [
        (call.id, "transfer", CommandReason.AFTER_WINDOW)
    ]
    assert sim.stats()["calls"]["violations"] == 1
    assert call.command is None  # nothing ended the parking: the window did
    await webhook_sink.wait_state(call.id, "hiding")
    infos = webhook_sink.for_call(call.id)
    assert [(i["state"], i.get("callee", {}).get("id")) for i in infos[1:5]] == [
        ("showing", IVANOV),
        ("connected", IVANOV),
        ("hiding", IVANOV),
        ("showing", PETROVA),
    ]
    assert call.tried == [IVANOV, PETROVA]
    latency = call.decision_latency_s
    assert latency is not None
    assert latency >= sim.config.parking_window_s


async def test_terminate_releases_to_the_pbx_at_once(
    sim: Simulator, sim_http: aiohttp.ClientSession, webhook_sink: WebhookSink, token: str
) -> None:
    """terminateCall: the PBX routes now; a second command acts on the live call: a violation."""
    call = await sim.place_call(CLIENT, NUMBER)
    trying = await webhook_sink.wait_state(call.id, "trying")
    assert (await command(sim_http, sim, token, trying))[0] == 200
    assert call.outcome is CallOutcome.TERMINATED
    assert call.tried == [IVANOV]
    assert call.outcome_at is not None
    assert call.deadline is not None
    assert call.outcome_at < call.deadline
    assert (await command(sim_http, sim, token, trying, PETROVA))[0] == 200
    assert [c.verdict for c in call.commands] == ["fine", "violation"]
    assert call.violations[0].reason in (CommandReason.PBX_RINGING, CommandReason.ANSWERED)
    assert call.refused == []
    await call.wait_done()
    assert call.tried == [IVANOV, PETROVA]


async def test_unanswered_transfer_hides_then_pbx_routes(
    sim: Simulator, sim_http: aiohttp.ClientSession, webhook_sink: WebhookSink, token: str
) -> None:
    """A workplace that never answers: showing -> hiding, then the PBX tries its own route."""
    sim.set_answer(PETROVA, None)
    call = await sim.place_call(CLIENT, NUMBER)
    trying = await webhook_sink.wait_state(call.id, "trying")
    assert (await command(sim_http, sim, token, trying, PETROVA))[0] == 200
    await call.wait_done()
    infos = webhook_sink.for_call(call.id)
    assert [(i["state"], i.get("callee", {}).get("accountId")) for i in infos] == [
        ("trying", NUMBER),
        ("showing", PETROVA),
        ("hiding", PETROVA),
        ("showing", IVANOV),
        ("connected", IVANOV),
        ("finished", IVANOV),
        ("recorded", None),
    ]
    assert freed_workplace(parsed(infos[2])) == PETROVA
    assert call.workplace == IVANOV


async def test_nobody_answers(sim: Simulator, webhook_sink: WebhookSink, token: str) -> None:
    """Per-call answer overrides: when no workplace answers, the call finishes unanswered."""
    sim.pbx.set_parking([NUMBER], on=False)
    never: dict[str, float | None] = dict.fromkeys(sim.pbx.workplaces)
    call = await sim.place_call(CLIENT, NUMBER, answer=never)
    assert call.outcome is CallOutcome.NOT_PARKED
    await call.wait_done()
    assert call.workplace is None
    assert call.tried == list(sim.pbx.workplaces)
    states = webhook_sink.states(call.id)
    assert states == ["trying", *["showing", "hiding"] * 4, "finished"]
    assert webhook_sink.for_call(call.id)[-1]["duration"] == 0


async def test_busy_workplace_does_not_answer_a_transfer(
    sim: Simulator, sim_http: aiohttp.ClientSession, webhook_sink: WebhookSink, token: str
) -> None:
    """A workplace on a call gets showing -> hiding; the PBX then picks a free one."""
    first = await sim.place_call(CLIENT, NUMBER, talk_ms=60_000)
    trying = await webhook_sink.wait_state(first.id, "trying")
    await command(sim_http, sim, token, trying, SIDOROV)
    await webhook_sink.wait_state(first.id, "connected")
    assert sim.pbx.is_busy(SIDOROV)
    second = await sim.place_call("79219462761", NUMBER)
    trying = await webhook_sink.wait_state(second.id, "trying")
    await command(sim_http, sim, token, trying, SIDOROV)
    await webhook_sink.wait_state(second.id, "connected")
    assert second.tried == [SIDOROV, IVANOV]
    assert webhook_sink.states(second.id)[:4] == ["trying", "showing", "hiding", "showing"]


async def test_make_call_sequence(
    sim: Simulator, sim_http: aiohttp.ClientSession, webhook_sink: WebhookSink, token: str
) -> None:
    """makeCall: outgoing trying (caller = workplace), showing, connected, finished, recorded."""
    params = {"calleeId": "89219462761", "callerId": PETROVA}
    _, body = await api_call(sim_http, sim, "POST", "makeCall", token, params)
    call = sim.call(body["result"]["call"]["id"])
    assert call is not None
    await call.wait_done()
    infos = webhook_sink.for_call(call.id)
    assert [i["state"] for i in infos] == ["trying", "showing", "connected", "finished", "recorded"]
    assert all(i.get("type") == "outgoing" for i in infos[:4])
    assert infos[0]["caller"] == {
        "accountId": PETROVA,
        "centrexId": "67821426",
        "displayId": "74996497803",
        "forwarderList": [],
        "id": "74996497803",
    }
    # The document shows +7... while ringing and 7... once connected.
    assert infos[0]["callee"] == {
        "displayId": "+79219462761",
        "forwarderList": [],
        "id": "+79219462761",
    }
    assert infos[2]["callee"]["id"] == "79219462761"
    assert infos[3]["reason"] == "Originate leg disconnected"
    assert infos[3]["reasonCode"] is None
    assert infos[4]["accountId"] == PETROVA
    assert [workplace_of(parsed(i)) for i in infos[:4]] == [PETROVA] * 4
    assert call.outcome is CallOutcome.OUTGOING


async def test_make_call_unanswered_by_the_workplace(
    sim: Simulator, sim_http: aiohttp.ClientSession, webhook_sink: WebhookSink, token: str
) -> None:
    """If the workplace never picks up, the second leg is never dialled."""
    sim.set_answer(PETROVA, None)
    call = sim.make_call(PETROVA, "89219462761")
    await call.wait_done()
    assert webhook_sink.states(call.id) == ["trying", "finished"]
    assert call.workplace is None


async def test_forwarded_leg_is_never_parked(
    sim: Simulator, sim_http: aiohttp.ClientSession, webhook_sink: WebhookSink, token: str
) -> None:
    """A leg with a forwarderList goes to the PBX at once; a transfer for it is a violation."""
    call = await sim.place_call(CLIENT, NUMBER, forwarders=[IVANOV])
    assert call.outcome is CallOutcome.FORWARDED
    trying = await webhook_sink.wait_state(call.id, "trying")
    assert trying["callee"]["forwarderList"] == [IVANOV]
    assert not is_parked_trying(parsed(trying), {NUMBER})
    assert (await command(sim_http, sim, token, trying, PETROVA))[0] == 200
    [violation] = call.violations
    assert violation.reason in (CommandReason.PBX_RINGING, CommandReason.ANSWERED)
    assert call.command is None
    await call.wait_done()
    assert all(
        i.get("callee", {}).get("forwarderList") == [IVANOV]
        for i in webhook_sink.for_call(call.id)[:-1]
    )


async def test_duplicate_trying_delivery(
    sim: Simulator, webhook_sink: WebhookSink, token: str
) -> None:
    """The duplicate_trying knob POSTs the same trying twice."""
    sim.faults.duplicate_trying = 1
    call = await sim.place_call(CLIENT, NUMBER)
    await webhook_sink.wait_for(lambda b: len(webhook_sink.states(call.id)) >= 2)
    tryings = [i for i in webhook_sink.for_call(call.id) if i["state"] == "trying"]
    assert len(tryings) == 2
    assert tryings[0] == tryings[1]
    assert call.states[:2] == ["trying", "trying"]


async def test_webhook_failures_are_recorded(sim: Simulator, webhook_sink: WebhookSink) -> None:
    """A receiver answering 500, or no receiver at all, is recorded; the call goes on."""
    sim.webhook_url = webhook_sink.url
    webhook_sink.status = 500
    call = await sim.place_call(CLIENT, NUMBER)
    assert call.notifications[0].status == 500
    sim.webhook_url = None
    other = await sim.place_call(CLIENT, NUMBER)
    assert other.notifications[0].error == "no webhook URL set"
    assert sim.stats()["notifications"]["failed"] == 2


async def test_vpbx_notifications(
    sim: Simulator, sim_http: aiohttp.ClientSession, webhook_sink: WebhookSink, token: str
) -> None:
    """Changing numbers or workplaces sends numbersChanged / workplacesChanged."""
    await sim.set_numbers(["74996497803", "78121234567"])
    await sim.set_workplaces({IVANOV: "Иван Иванов"})
    assert webhook_sink.received == [
        {"event": "vpbxNotifications", "result": {"eventType": "numbersChanged"}},
        {"event": "vpbxNotifications", "result": {"eventType": "workplacesChanged"}},
    ]
    _, body = await api_call(sim_http, sim, "GET", "externalNumbersInfo", token)
    assert [n["number"] for n in body["result"]["numbersList"]] == ["74996497803", "78121234567"]
    assert sim.pbx.parked == {"74996497803"}


async def test_calls_over_the_control_api(
    sim: Simulator, sim_http: aiohttp.ClientSession, webhook_sink: WebhookSink
) -> None:
    """POST /_sim/calls places a call; GET /_sim/calls/{id} shows its record."""
    async with sim_http.put(f"{sim.url}/_sim/webhook", json={"url": webhook_sink.url}) as resp:
        assert resp.status == 200
    assert sim.webhook_url == webhook_sink.url
    async with sim_http.post(
        f"{sim.url}/_sim/workplaces/{IVANOV}", json={"answer_after_ms": None}
    ) as resp:
        assert (await resp.json())["answer_after_ms"] is None
    body = {"caller": CLIENT, "callee": "8 499 649-78-03", "talk_ms": 10, "answer": {PETROVA: 5}}
    async with sim_http.post(f"{sim.url}/_sim/calls", json=body) as resp:
        assert resp.status == 201
        record = (await resp.json())["call"]
    assert record["callee"] == NUMBER
    assert record["parked"] is True
    assert record["states"] == ["trying"]
    call = sim.call(record["id"])
    assert call is not None
    await call.wait_done()
    async with sim_http.get(f"{sim.url}/_sim/calls/{record['id']}") as resp:
        record = (await resp.json())["call"]
    assert record["outcome"] == "pbx_timeout"
    assert record["tried"] == [IVANOV, PETROVA]
    assert record["workplace"] == PETROVA
    assert record["states"] == [
        "trying",
        "showing",
        "hiding",
        "showing",
        "connected",
        "finished",
        "recorded",
    ]
    async with sim_http.get(f"{sim.url}/_sim/calls?limit=1") as resp:
        assert [c["id"] for c in (await resp.json())["calls"]] == [call.id]
    async with sim_http.post(
        f"{sim.url}/_sim/calls", json={"caller": CLIENT, "callee": "123"}
    ) as resp:
        assert resp.status == 400
    async with sim_http.get(f"{sim.url}/_sim/calls/nope") as resp:
        assert resp.status == 404


async def test_reset(sim: Simulator, sim_http: aiohttp.ClientSession) -> None:
    """POST /_sim/reset forgets calls, tokens and faults and restores the PBX."""
    sim.issue_tokens()
    sim.set_answer(IVANOV, None)
    sim.faults.storm_401 = 3
    sim.start_call(CLIENT, NUMBER)
    async with sim_http.post(f"{sim.url}/_sim/reset") as resp:
        assert resp.status == 200
    assert sim.calls() == []
    assert sim.tokens.access == {}
    assert sim.faults.storm_401 == 0
    assert sim.pbx.answer_after_ms(IVANOV) == sim.config.answer_after_ms


def test_sim_call_latency_needs_a_command() -> None:
    """No command received: no decision latency."""
    call = SimCall("id", "tag", "10.133.1.1:5073", "incoming", CLIENT, NUMBER, 0.0, 0.0, "", 0.0)
    assert call.decision_latency_s is None
    assert call.first_command is None


async def test_skipped_states_are_recorded_but_not_sent(webhook_sink: WebhookSink) -> None:
    """``skip_states`` lightens load tests: the lifecycle runs, those POSTs do not happen."""
    config = SimConfig(
        skip_states=frozenset({"showing", "recorded"}),
        parked=(),
        answer_after_ms=1,
        talk_ms=1,
        record_delay_ms=1,
    )
    async with serve_simulator(config) as sim:
        sim.webhook_url = webhook_sink.url
        call = await sim.place_call(CLIENT, NUMBER)
        await call.wait_done()
        assert call.states == ["trying", "showing", "connected", "finished", "recorded"]
        assert webhook_sink.states(call.id) == ["trying", "connected", "finished"]
        assert sim.stats()["notifications"] == {"delivered": 3, "failed": 0, "skipped": 2}


async def test_command_after_deadline_is_late_even_before_the_timer_fires(
    webhook_sink: WebhookSink,
) -> None:
    """A busy loop may run the window timer late; the deadline still decides."""
    async with serve_simulator(SimConfig(parking_window_s=0.05, talk_ms=60_000)) as sim:
        sim.webhook_url = webhook_sink.url
        call = await sim.place_call(CLIENT, NUMBER)
        assert call.deadline is not None
        # Blocking the loop is the point: the window timer must not get to run.
        time.sleep(max(0.0, call.deadline - time.monotonic()) + 0.01)  # noqa: ASYNC251
        before = call.outcome  # a local: the attribute changes under the command below
        assert before is None
        record = sim.commands.command("transfer", call.id, call.tag, call.transport_id, PETROVA)
        assert (record.reason, record.accepted) == (CommandReason.AFTER_WINDOW, True)
        assert call.outcome is CallOutcome.PBX_TIMEOUT
        assert call.late
        await webhook_sink.wait_state(call.id, "connected")
        assert call.tried == [IVANOV, PETROVA]  # the PBX rang ivanov, the late transfer moved it
        assert call.workplace == PETROVA
