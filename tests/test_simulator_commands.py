"""Commands as MTT's document allows them: every one carried out, and each one classified.

A command on a parked call inside its window is fine, a second transfer of a call still ringing
unanswered where the daemon sent it is a re-route, anything else is a violation that the
simulator records. Also the knobs for what the document leaves open, and workplaces with several
terminals.
"""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from router.callmodel import CommandReason
from router.simulator import EndpointFault, SimConfig, Simulator
from tests.fixtures.sim import Body, WebhookSink, api_call

CLIENT = "78124241500"
NUMBER = "74996497803"
IVANOV, PETROVA, SIDOROV = "883140777716581", "883140582526566", "883140777380595"
DESK, MOBILE = "883140000000001", "883140000000002"
"""Ivanov's two terminals."""


@pytest.fixture
def sim_config() -> SimConfig:
    """Fast timings; ivanov's workplace has two terminals and picks up on the second."""
    return SimConfig(
        parking_window_s=0.5,
        answer_after_ms=20.0,
        ring_timeout_ms=150.0,
        talk_ms=50.0,
        record_delay_ms=10.0,
        callee_answer_ms=20.0,
        terminals={DESK: IVANOV, MOBILE: IVANOV},
        answering_terminals={IVANOV: MOBILE},
        seed=1,
    )


@pytest.fixture
def token(sim: Simulator, webhook_sink: WebhookSink) -> str:
    sim.webhook_url = webhook_sink.url
    return sim.issue_tokens()["access_token"]


async def command(
    http: aiohttp.ClientSession, sim: Simulator, token: str, trying: Body, workplace: str = ""
) -> tuple[int, Any]:
    """transferCall to ``workplace``, or terminateCall without one."""
    params: Body = {
        "call": {"id": trying["call"]["id"], "tag": trying["call"]["tag"]},
        "transportId": trying["transportId"],
    }
    if workplace:
        params["calleeId"] = workplace
    name = "transferCall" if workplace else "terminateCall"
    return await api_call(http, sim, "POST", name, token, params)


async def test_reroute_of_a_call_ringing_where_we_sent_it_is_fine(
    sim: Simulator, sim_http: aiohttp.ClientSession, webhook_sink: WebhookSink, token: str
) -> None:
    """Transferred to a workplace that does not pick up, then transferred on: a re-route."""
    sim.set_answer(PETROVA, None)
    call = await sim.place_call(CLIENT, NUMBER)
    trying = await webhook_sink.wait_state(call.id, "trying")
    assert (await command(sim_http, sim, token, trying, PETROVA))[0] == 200
    await webhook_sink.wait_state(call.id, "showing")
    assert (await command(sim_http, sim, token, trying, SIDOROV))[0] == 200
    await call.wait_done()
    assert [c.verdict for c in call.commands] == ["fine", "reroute"]
    assert sim.violations() == []
    assert webhook_sink.states(call.id)[:5] == [
        "trying",
        "showing",
        "hiding",
        "showing",
        "connected",
    ]
    assert (call.tried, call.workplace) == ([PETROVA, SIDOROV], SIDOROV)
    assert sim.stats()["calls"]["commands"] == {"fine": 1, "reroute": 1, "violation": 0}


async def test_reroute_of_a_call_our_workplace_declined_is_fine(
    sim: Simulator, sim_http: aiohttp.ClientSession, webhook_sink: WebhookSink, token: str
) -> None:
    """Transferred to a workplace that declines (hiding): the PBX rings its own choice, and a
    transfer of the call, still unanswered, is a re-route."""
    sim.set_decline(PETROVA, 10)
    sim.set_answer(IVANOV, None)  # the PBX's own choice rings on, unanswered
    call = await sim.place_call(CLIENT, NUMBER)
    trying = await webhook_sink.wait_state(call.id, "trying")
    assert (await command(sim_http, sim, token, trying, PETROVA))[0] == 200
    rung = ["trying", "showing", "hiding", "showing"]
    await webhook_sink.wait_for(lambda _: webhook_sink.states(call.id) == rung)
    assert (await command(sim_http, sim, token, trying, SIDOROV))[0] == 200
    await call.wait_done()
    assert [c.reason for c in call.commands] == ["parked", "reroute"]
    assert sim.violations() == []
    assert (call.tried, call.workplace) == ([PETROVA, IVANOV, SIDOROV], SIDOROV)


async def test_a_transfer_after_the_pbx_choice_answered_is_a_violation(
    sim: Simulator, sim_http: aiohttp.ClientSession, webhook_sink: WebhookSink, token: str
) -> None:
    """Declined where we sent it, then answered where the PBX sent it: a transfer now would
    move a live call."""
    sim.set_decline(PETROVA, 10)
    call = await sim.place_call(CLIENT, NUMBER, talk_ms=60_000)
    trying = await webhook_sink.wait_state(call.id, "trying")
    assert (await command(sim_http, sim, token, trying, PETROVA))[0] == 200
    await webhook_sink.wait_state(call.id, "connected")
    assert (await command(sim_http, sim, token, trying, SIDOROV))[0] == 200
    assert [c.reason for c in call.commands] == ["parked", "answered"]
    assert [v.reason for v in sim.violations()] == [CommandReason.ANSWERED]


async def test_a_second_command_after_a_5xx_is_a_violation(
    sim: Simulator, sim_http: aiohttp.ClientSession, webhook_sink: WebhookSink, token: str
) -> None:
    """A 500 may have been applied: the next command, even inside the window, is a violation."""
    sim.faults.set("transferCall", EndpointFault(status=500, count=1))
    call = await sim.place_call(CLIENT, NUMBER)
    trying = await webhook_sink.wait_state(call.id, "trying")
    assert (await command(sim_http, sim, token, trying, PETROVA))[0] == 500
    assert (await command(sim_http, sim, token, trying, SIDOROV))[0] == 200
    first, second = call.commands
    assert (first.refusal, first.status, first.verdict) == ("fault", 500, "fine")
    assert (second.reason, second.accepted) == (CommandReason.AFTER_AMBIGUOUS, True)
    assert call.maybe_applied
    assert [v.reason for v in sim.violations()] == [CommandReason.AFTER_AMBIGUOUS]


async def test_a_second_command_after_a_4xx_is_fine(
    sim: Simulator, sim_http: aiohttp.ClientSession, webhook_sink: WebhookSink, token: str
) -> None:
    """A 4xx certainly was not applied: the next candidate inside the window is fine."""
    sim.faults.set("transferCall", EndpointFault(status=400, count=1))
    call = await sim.place_call(CLIENT, NUMBER)
    trying = await webhook_sink.wait_state(call.id, "trying")
    assert (await command(sim_http, sim, token, trying, PETROVA))[0] == 400
    assert (await command(sim_http, sim, token, trying, SIDOROV))[0] == 200
    assert [(c.verdict, c.refusal) for c in call.commands] == [("fine", "fault"), ("fine", None)]
    assert sim.violations() == []


async def test_a_dropped_command_marks_the_call_maybe_applied(
    sim: Simulator, sim_http: aiohttp.ClientSession, webhook_sink: WebhookSink, token: str
) -> None:
    """A connection closed without an answer: the daemon cannot know; MTT counts it as sent."""
    sim.faults.set("terminateCall", EndpointFault(drop=True, count=1))
    call = await sim.place_call(CLIENT, NUMBER)
    trying = await webhook_sink.wait_state(call.id, "trying")
    with pytest.raises(aiohttp.ClientError):
        await command(sim_http, sim, token, trying)
    assert call.maybe_applied
    assert [(c.refusal, c.status) for c in call.commands] == [("fault", 0)]


async def test_commands_on_an_answered_call_move_or_end_it(
    sim: Simulator, sim_http: aiohttp.ClientSession, webhook_sink: WebhookSink, token: str
) -> None:
    """Answered: a transfer hides it and rings elsewhere, a terminate ends it; both violations."""
    call = await sim.place_call(CLIENT, NUMBER, talk_ms=60_000)
    trying = await webhook_sink.wait_state(call.id, "trying")
    assert (await command(sim_http, sim, token, trying, PETROVA))[0] == 200
    await webhook_sink.wait_state(call.id, "connected")
    assert sim.pbx.is_busy(PETROVA)
    assert (await command(sim_http, sim, token, trying, SIDOROV))[0] == 200
    assert not sim.pbx.is_busy(PETROVA)
    await webhook_sink.wait_for(lambda _: webhook_sink.states(call.id).count("connected") == 2)
    assert (await command(sim_http, sim, token, trying))[0] == 200
    await call.wait_done()
    assert webhook_sink.states(call.id) == [
        "trying",
        "showing",
        "connected",
        "hiding",
        "showing",
        "connected",
        "finished",
        "recorded",
    ]
    assert [c.reason for c in call.commands] == ["parked", "answered", "answered"]
    assert len(sim.violations()) == 2
    assert not sim.pbx.is_busy(SIDOROV)


async def test_a_command_on_an_ended_call_is_404_and_a_violation(
    sim: Simulator, sim_http: aiohttp.ClientSession, webhook_sink: WebhookSink, token: str
) -> None:
    """The call is over: nothing to act on (404), yet the daemon should not have sent it."""
    call = await sim.place_call(CLIENT, NUMBER)
    trying = await webhook_sink.wait_state(call.id, "trying")
    await command(sim_http, sim, token, trying, PETROVA)
    await call.wait_done()
    status, body = await command(sim_http, sim, token, trying)
    assert (status, body["error"]["code"]) == (404, 404)
    assert [(v.kind, v.reason) for v in sim.violations()] == [("terminate", "ended")]
    assert call.refused[0].refusal == "gone"


async def test_unknown_calls_and_make_calls(
    sim: Simulator, sim_http: aiohttp.ClientSession, token: str
) -> None:
    """A call MTT never announced: 404, counted, nothing to act on; a makeCall: a violation."""
    unknown: Body = {"call": {"id": "x", "tag": "y"}, "transportId": "z"}
    assert (await command(sim_http, sim, token, unknown))[0] == 404
    assert sim.stats()["calls"]["unknown_call_commands"] == 1
    assert sim.violations() == []
    call = sim.make_call(PETROVA, "89219462761")
    outgoing: Body = {"call": {"id": call.id, "tag": call.tag}, "transportId": call.transport_id}
    assert (await command(sim_http, sim, token, outgoing, IVANOV))[0] == 200
    assert [v.reason for v in sim.violations()] == [CommandReason.OUTGOING]
    async with sim_http.get(f"{sim.url}/_sim/violations") as resp:
        [shown] = (await resp.json())["violations"]
    assert (shown["call_id"], shown["reason"], shown["workplace"]) == (call.id, "outgoing", IVANOV)


# -- workplaces with several terminals ---------------------------------------------------------


async def test_a_workplace_with_two_terminals(
    sim: Simulator, sim_http: aiohttp.ClientSession, webhook_sink: WebhookSink, token: str
) -> None:
    """terminalsInfo lists both; the legs carry id = the workplace, accountId = the terminal."""
    _, body = await api_call(sim_http, sim, "GET", "terminalsInfo", token)
    rows = body["result"]["terminals_list"]
    assert {"terminal": MOBILE, "workplace": IVANOV} in rows
    assert {"terminal": DESK, "workplace": IVANOV} in rows
    assert {"terminal": IVANOV, "workplace": IVANOV} not in rows
    call = await sim.place_call(CLIENT, NUMBER)
    trying = await webhook_sink.wait_state(call.id, "trying")
    await command(sim_http, sim, token, trying, IVANOV)
    await call.wait_done()
    infos = webhook_sink.for_call(call.id)
    legs = [(i["state"], i["callee"]["id"], i["callee"]["accountId"]) for i in infos[1:4]]
    assert legs == [(s, IVANOV, MOBILE) for s in ("showing", "connected", "finished")]
    assert infos[4]["accountId"] == MOBILE  # recorded: the terminal
    assert call.terminal == MOBILE


async def test_make_call_from_a_workplace_with_two_terminals(
    sim: Simulator, webhook_sink: WebhookSink, token: str
) -> None:
    """makeCall: the caller's accountId is the terminal that picked up, its id the number."""
    call = sim.make_call(IVANOV, "89219462761")
    await call.wait_done()
    [trying] = [i for i in webhook_sink.for_call(call.id) if i["state"] == "trying"]
    assert (trying["caller"]["accountId"], trying["caller"]["id"]) == (MOBILE, NUMBER)


# -- what the document leaves open -------------------------------------------------------------


async def test_leg_id_can_be_the_external_number(
    sim: Simulator, sim_http: aiohttp.ClientSession, webhook_sink: WebhookSink, token: str
) -> None:
    """leg_id: number: a workplace's leg carries the dialled number as id, the terminal as
    accountId (the rule then goes through terminalsInfo)."""
    async with sim_http.post(f"{sim.url}/_sim/quirks", json={"leg_id": "number"}) as resp:
        assert (await resp.json())["leg_id"] == "number"
    call = await sim.place_call(CLIENT, NUMBER)
    trying = await webhook_sink.wait_state(call.id, "trying")
    await command(sim_http, sim, token, trying, IVANOV)
    showing = await webhook_sink.wait_state(call.id, "showing")
    assert (showing["callee"]["id"], showing["callee"]["accountId"]) == (NUMBER, MOBILE)


@pytest.mark.parametrize("release", ["terminate", "window"])
async def test_trying_again_after_a_release(
    sim: Simulator,
    sim_http: aiohttp.ClientSession,
    webhook_sink: WebhookSink,
    token: str,
    release: str,
) -> None:
    """trying_after_release: the PBX announces the released call again, the same trying."""
    sim.quirks.trying_after_release = True
    call = await sim.place_call(CLIENT, NUMBER)
    trying = await webhook_sink.wait_state(call.id, "trying")
    if release == "terminate":
        await command(sim_http, sim, token, trying)
    await call.wait_done()
    states = webhook_sink.states(call.id)
    assert states[:3] == ["trying", "trying", "showing"]
    first, second = webhook_sink.for_call(call.id)[:2]
    assert first == second


async def test_quirks_over_http(
    sim: Simulator, sim_http: aiohttp.ClientSession, token: str
) -> None:
    """/_sim/quirks shows and sets the knobs; a bad value changes nothing; reset restores them."""
    async with sim_http.post(f"{sim.url}/_sim/quirks", json={"list_total_extra": 2}) as resp:
        assert (await resp.json())["list_total_extra"] == 2
    _, body = await api_call(sim_http, sim, "GET", "externalNumbersInfo", token)
    assert (body["result"]["total"], len(body["result"]["numbersList"])) == (4, 2)
    async with sim_http.post(f"{sim.url}/_sim/quirks", json={"leg_id": "sip"}) as resp:
        assert resp.status == 400
    await sim.reset()
    async with sim_http.get(f"{sim.url}/_sim/quirks") as resp:
        assert await resp.json() == {
            "leg_id": "workplace",
            "trying_after_release": False,
            "list_total_extra": 0,
        }
