"""The call model in the running daemon, against the simulator over HTTP.

Which workplace a leg is at (a workplace's second terminal), which calls count as parked while
the number list is unknown, what /readyz says then, and the audit of sequences the model did not
expect. Every daemon here ends with the simulator having recorded no violation (the fixture).
"""

from __future__ import annotations

import asyncio

import pytest

from router.simulator import SimConfig, Simulator
from tests.fixtures.daemon import (
    IVANOV_CLIENT,
    IVANOV_WP,
    NUMBER,
    OTHER_NUMBER,
    RULES,
    SIDOROV_WP,
    UNKNOWN_CALLER,
    WAIT_S,
    RunningDaemon,
    StartDaemon,
    daemon_sim_config,
    finished,
    outcome_of,
    routed_to,
)
from tests.polling import eventually

DESK, MOBILE = "883140000000001", "883140000000002"
"""Ivanov's two terminals; he picks up on the second."""
NO_FALLBACK_PBX = RULES.replace("  managers: [sidorov]\n", "  managers: []\n")
NO_FALLBACK_WAIT = NO_FALLBACK_PBX.replace("otherwise: pbx", "otherwise: wait")


@pytest.fixture
def sim_config() -> SimConfig:
    """A 1 s window; ivanov's workplace has two terminals and answers on the second."""
    return daemon_sim_config(
        terminals={DESK: IVANOV_WP, MOBILE: IVANOV_WP}, answering_terminals={IVANOV_WP: MOBILE}
    )


def surprises(daemon: RunningDaemon, kind: str) -> float:
    """``mtt_router_callmodel_surprises_total{kind}``."""
    return daemon.sample("mtt_router_callmodel_surprises_total", kind=kind)


# -- which workplace a leg is at ---------------------------------------------------------------


async def test_answered_on_a_second_terminal_makes_the_manager_busy(daemon: RunningDaemon) -> None:
    """The connected leg names the dialled number as id and the terminal as accountId: the
    daemon maps the terminal to ivanov's workplace, so his next caller goes to the fallback."""
    daemon.sim.quirks.leg_id = "number"
    first = await daemon.sim.place_call(IVANOV_CLIENT, NUMBER, talk_ms=2000)
    assert await outcome_of(first) == "transferred"
    await eventually(lambda: "connected" in first.states, "ivanov answered")
    connected = next(n.payload for n in first.notifications if n.state == "connected")
    callee = connected["result"]["callInfo"]["callee"]
    assert (callee["id"], callee["accountId"]) == (NUMBER, MOBILE)

    await daemon.wait_busy([IVANOV_WP], "the daemon knows ivanov is on a call")
    second = await daemon.sim.place_call(IVANOV_CLIENT, NUMBER)
    assert await outcome_of(second) == "transferred"
    assert routed_to(second) == SIDOROV_WP
    await asyncio.wait_for(first.wait_done(), WAIT_S)

    await daemon.wait_busy([], "ivanov is free again")
    assert surprises(daemon, "unknown_workplace") == 0


async def test_directory_lists_the_terminals(daemon: RunningDaemon) -> None:
    """The directory fetched terminalsInfo with the workplaces and counts them."""
    assert daemon.sample("mtt_router_directory_entries", kind="terminals") == 5
    assert daemon.sim.requests_to("terminalsInfo")[0].status == 200


async def test_a_leg_at_a_workplace_nobody_listed_is_a_surprise(daemon: RunningDaemon) -> None:
    """A connected leg at a SIP ID that is neither a workplace nor a terminal: counted."""
    leg = {
        "event": "callNotifications",
        "result": {
            "callInfo": {
                "call": {"id": "stray-1", "tag": "t"},
                "callee": {"id": "883149999999999", "accountId": "883149999999999"},
                "caller": {"id": UNKNOWN_CALLER},
                "state": "connected",
                "type": "incoming",
            }
        },
    }
    assert (await daemon.post_event(leg))[0] == 200
    await eventually(lambda: surprises(daemon, "unknown_workplace") == 1, "the surprise counted")
    assert surprises(daemon, "no_trying") == 1
    assert (await daemon.status())["engine"]["busy"] == []


# -- while the number list is unknown ----------------------------------------------------------


async def test_unknown_number_list_parks_only_the_numbers_routing_park_names(
    sim: Simulator, start_daemon: StartDaemon
) -> None:
    """MTT's total says more numbers than the list holds: the list is unknown, /readyz says so,
    calls to the number routing.park names are routed, calls to the other are left alone."""
    sim.quirks.list_total_extra = 1
    daemon = await start_daemon(park=[NUMBER], wait_ready=False)

    async def unknown() -> bool:
        code, body = await daemon.admin("/readyz")
        return code == 503 and "not read in full" in body["checks"].get("numbers", "")

    await eventually(unknown, "/readyz says the numbers are unknown")
    _, body = await daemon.admin("/readyz")
    assert body["checks"]["numbers"] == (
        "unknown: MTT's answer was not read in full: total 3 but 2 read; "
        f"calls count as parked only to the numbers routing.park names: {NUMBER}"
    )
    unread = daemon.sample("mtt_router_api_answers_unread_total", method="externalNumbersInfo")
    assert unread >= 1

    async def workplaces() -> bool:
        return (await daemon.status())["directory"]["workplaces"] is not None

    await eventually(workplaces, "the workplaces are known all the same")

    named = await daemon.sim.place_call(IVANOV_CLIENT, NUMBER)
    assert await outcome_of(named) == "transferred"
    other = await daemon.sim.place_call(IVANOV_CLIENT, OTHER_NUMBER)
    assert await finished(other) == "pbx_timeout"
    assert (other.commands, daemon.decisions()) == ([], 1)

    # MTT answers in full again: the list is known, the daemon ready, every number routed.
    daemon.sim.quirks.list_total_extra = 0
    await daemon.sim.notify_vpbx("numbersChanged")

    async def ready() -> bool:
        return (await daemon.admin("/readyz"))[0] == 200

    await eventually(ready, "ready once the list is read in full")
    call = await daemon.sim.place_call(IVANOV_CLIENT, OTHER_NUMBER)
    assert await outcome_of(call) == "transferred"


async def test_unknown_number_list_with_park_all_parks_nothing(
    sim: Simulator, start_daemon: StartDaemon
) -> None:
    """park: all names no number: while the list is unknown, no call is touched at all."""
    sim.quirks.list_total_extra = 1
    daemon = await start_daemon(park="all", wait_ready=False)

    async def unknown() -> bool:
        body = (await daemon.admin("/readyz"))[1]
        return "not read in full" in body["checks"].get("numbers", "")

    await eventually(unknown, "the numbers are unknown")
    assert (await daemon.admin("/readyz"))[1]["checks"]["numbers"].endswith(
        "none (routing.park names no number)"
    )
    call = await daemon.sim.place_call(IVANOV_CLIENT, NUMBER)
    assert await finished(call) == "pbx_timeout"
    assert (call.commands, daemon.decisions()) == ([], 0)
    assert (await daemon.status())["directory"]["numbers"] is None


# -- the audit, live ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rules", "first"), [(NO_FALLBACK_PBX, "fallback_pbx"), (NO_FALLBACK_WAIT, "waited")]
)
async def test_a_call_announced_again_after_its_release_gets_no_second_command(
    start_daemon: StartDaemon, rules: str, first: str
) -> None:
    """MTT announces a released call a second time (a knob: the document does not rule it out):
    the claim holds, no second command, and the audit counts the second trying."""
    daemon = await start_daemon(rules=rules)
    daemon.sim.quirks.trying_after_release = True
    call = await daemon.sim.place_call(UNKNOWN_CALLER, NUMBER)
    await asyncio.wait_for(call.wait_done(), WAIT_S)
    assert call.states[:2] == ["trying", "trying"]
    await daemon.wait_decisions(2)
    assert (daemon.decisions(first), daemon.decisions("duplicate")) == (1, 1)
    assert len(call.commands) == (1 if first == "fallback_pbx" else 0)
    assert surprises(daemon, "second_trying") == 1
    assert daemon.sim.violations() == []


async def test_ordinary_calls_surprise_nobody(daemon: RunningDaemon) -> None:
    """Transferred, released, forwarded and made calls all follow the model."""
    calls = [
        await daemon.sim.place_call(IVANOV_CLIENT, NUMBER),
        await daemon.sim.place_call(UNKNOWN_CALLER, NUMBER, forwarders=[SIDOROV_WP]),
        daemon.sim.make_call(IVANOV_WP, "89219462761"),
    ]
    for call in calls:
        await asyncio.wait_for(call.wait_done(), WAIT_S)
    kinds = {
        s.labels["kind"]: s.value
        for metric in daemon.metrics.registry.collect()
        if metric.name == "mtt_router_callmodel_surprises"
        for s in metric.samples
        if s.name.endswith("_total") and s.value
    }
    assert kinds == {}
