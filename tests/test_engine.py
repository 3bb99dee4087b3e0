"""Decisions end to end in-process: the daemon (real app factory) against the simulator over HTTP.

Each test places calls at the simulator and checks, call by call, what MTT saw (the command, the
workplace, whether the PBX had to route the call itself) and what the daemon counted.
"""

from __future__ import annotations

import asyncio
import os
import signal
from datetime import UTC, datetime

import pytest

from router.rules import source
from router.simulator import EndpointFault, SimConfig, Simulator
from router.simulator.config import DOC_NUMBERS
from tests.fixtures.daemon import (
    INVALID_RULES,
    IVANOV_CLIENT,
    IVANOV_WP,
    NUMBER,
    OTHER_NUMBER,
    PETROVA_WP,
    PREFIX_CALLER,
    RULES,
    SIDOROV_WP,
    UNKNOWN_CALLER,
    WAIT_S,
    RunningDaemon,
    StartDaemon,
    daemon_sim_config,
    finished,
    outcome_of,
    replace_file,
    routed_to,
)
from tests.polling import eventually

NO_FALLBACK_PBX = RULES.replace("  managers: [sidorov]\n", "  managers: []\n")
NO_FALLBACK_WAIT = NO_FALLBACK_PBX.replace("otherwise: pbx", "otherwise: wait")
NEW_NUMBER = "74951112233"


@pytest.fixture
def sim_config() -> SimConfig:
    """The simulator for daemon tests (1 s parking window)."""
    return daemon_sim_config()


def commands(daemon: RunningDaemon, call_id: str, endpoint: str = "transferCall") -> list[int]:
    """Statuses MTT answered to ``endpoint`` requests for ``call_id``, in order."""
    return [
        r.status
        for r in daemon.sim.requests_to(endpoint)
        if isinstance(r.body, dict) and r.body["params"]["call"]["id"] == call_id
    ]


# -- who gets the call -------------------------------------------------------------------------


async def test_decision_order_client_prefix_fallback(daemon: RunningDaemon) -> None:
    """A client goes to their manager, a prefix match to its manager, an unknown to the fallback."""
    expected = [
        (IVANOV_CLIENT, IVANOV_WP),
        (PREFIX_CALLER, PETROVA_WP),
        ("8 (812) 424-15-00", PETROVA_WP),  # the client entry, in another spelling
        (UNKNOWN_CALLER, SIDOROV_WP),
    ]
    for caller, workplace in expected:
        call = await daemon.sim.place_call(caller, NUMBER)
        assert (caller, await finished(call)) == (caller, "transferred")
        assert (caller, routed_to(call), call.refused) == (caller, workplace, [])
        assert call.decision_latency_s is not None
        assert call.decision_latency_s < 1.0  # inside MTT's parking window
    await daemon.wait_decisions(4)
    assert daemon.decisions("transferred") == 4
    assert daemon.sample("mtt_router_decision_seconds_count") == 4
    assert daemon.sample("mtt_router_api_requests_total", method="transferCall", code="200") == 4


async def test_unknown_caller_with_nobody_available_is_terminated(
    start_daemon: StartDaemon,
) -> None:
    """otherwise: pbx and no manager for the caller: terminateCall at once, fallback_pbx."""
    daemon = await start_daemon(rules=NO_FALLBACK_PBX)
    call = await daemon.sim.place_call(UNKNOWN_CALLER, NUMBER)
    assert await finished(call) == "terminated"  # the PBX then gave it to its first workplace
    assert call.command is not None
    assert call.command.kind == "terminate"
    assert commands(daemon, call.id) == []
    await daemon.wait_decisions(1)
    assert daemon.decisions("fallback_pbx") == 1
    # A client of a listed manager is still transferred under the same rules.
    call = await daemon.sim.place_call(IVANOV_CLIENT, NUMBER)
    assert await outcome_of(call) == "transferred"


async def test_otherwise_wait_sends_no_command(start_daemon: StartDaemon) -> None:
    """otherwise: wait: no command at all; the PBX routes the call when the window ends."""
    daemon = await start_daemon(rules=NO_FALLBACK_WAIT)
    call = await daemon.sim.place_call(UNKNOWN_CALLER, NUMBER)
    await daemon.wait_decisions(1)
    assert daemon.decisions("waited") == 1
    assert await outcome_of(call) == "pbx_timeout"
    assert (call.command, call.refused) == (None, [])
    assert daemon.sim.requests_to("transferCall") == []
    assert daemon.sim.requests_to("terminateCall") == []


async def test_schedules_follow_the_daemon_clock(start_daemon: StartDaemon) -> None:
    """Inside office hours the client's manager gets the call; outside them, the fallback."""
    rules = (
        RULES.replace(
            '    name: "Иван Иванов"\n', '    name: "Иван Иванов"\n    schedule: office\n'
        )
        + 'schedules:\n  office:\n    mon-fri: "09:00-18:00"\n'
    )
    monday_10_msk = datetime(2026, 11, 30, 7, 0, tzinfo=UTC)
    sunday_03_msk = datetime(2026, 11, 29, 0, 0, tzinfo=UTC)
    now = [monday_10_msk]
    daemon = await start_daemon(rules=rules, clock=lambda: now[0])
    call = await daemon.sim.place_call(IVANOV_CLIENT, NUMBER)
    assert await finished(call) == "transferred"
    assert routed_to(call) == IVANOV_WP
    now[0] = sunday_03_msk
    call = await daemon.sim.place_call(IVANOV_CLIENT, NUMBER)
    assert await outcome_of(call) == "transferred"
    assert routed_to(call) == SIDOROV_WP


async def test_manager_on_a_call_is_skipped(daemon: RunningDaemon) -> None:
    """While the manager is connected (not finished) the next call goes to the fallback."""
    first = await daemon.sim.place_call(IVANOV_CLIENT, NUMBER, talk_ms=1500)
    assert await outcome_of(first) == "transferred"
    await eventually(lambda: "connected" in first.states, "the manager answered")

    await daemon.wait_busy([IVANOV_WP], "the daemon knows the manager is on a call")
    second = await daemon.sim.place_call(IVANOV_CLIENT, NUMBER)
    assert await outcome_of(second) == "transferred"
    assert routed_to(second) == SIDOROV_WP

    # Once the first call is finished the manager is free again.
    await asyncio.wait_for(first.wait_done(), WAIT_S)

    await daemon.wait_busy([], "the manager is free again")
    third = await daemon.sim.place_call(IVANOV_CLIENT, NUMBER)
    assert await outcome_of(third) == "transferred"
    assert routed_to(third) == IVANOV_WP


# -- one decision per call, and only for parked calls ------------------------------------------


async def test_duplicate_trying_gets_one_decision(daemon: RunningDaemon) -> None:
    """The same trying delivered twice at once: one transferCall; the copy counts as duplicate."""
    daemon.sim.faults.duplicate_trying = 1
    call = await daemon.sim.place_call(IVANOV_CLIENT, NUMBER)
    assert await outcome_of(call) == "transferred"
    await daemon.wait_decisions(2)
    assert call.states.count("trying") == 2
    assert commands(daemon, call.id) == [200]
    assert commands(daemon, call.id, "terminateCall") == []
    assert call.refused == []
    assert (daemon.decisions("transferred"), daemon.decisions("duplicate")) == (1, 1)
    assert daemon.sample("mtt_router_decision_seconds_count") == 1  # duplicates are not timed


async def test_forwarded_leg_is_not_routed(daemon: RunningDaemon) -> None:
    """A trying whose forwarderList is not empty gets no decision and no command."""
    forwarded = await daemon.sim.place_call(UNKNOWN_CALLER, NUMBER, forwarders=[IVANOV_WP])
    assert await outcome_of(forwarded) == "forwarded"
    await asyncio.wait_for(forwarded.wait_done(), WAIT_S)
    # A plain call after it: once its decision is counted, any for the forwarded leg would be too.
    sentinel = await daemon.sim.place_call(PREFIX_CALLER, NUMBER)
    assert await outcome_of(sentinel) == "transferred"
    await daemon.wait_decisions(1)
    assert daemon.decisions() == 1
    assert commands(daemon, forwarded.id) == []
    assert commands(daemon, forwarded.id, "terminateCall") == []
    assert (forwarded.command, forwarded.refused) == (None, [])


async def test_number_not_ours_is_not_routed_until_numbers_changed(
    daemon: RunningDaemon,
) -> None:
    """A trying to a number the directory does not list is left alone; numbersChanged fixes it."""
    sim = daemon.sim
    await sim.set_numbers([*DOC_NUMBERS, NEW_NUMBER], notify=False)
    sim.set_parking([NEW_NUMBER], True)
    call = await sim.place_call(IVANOV_CLIENT, NEW_NUMBER)
    assert await finished(call) == "pbx_timeout"  # parked, but nobody told MTT what to do
    assert (call.command, call.refused) == (None, [])
    assert daemon.decisions() == 0

    await sim.notify_vpbx("numbersChanged")

    async def listed() -> bool:
        return NEW_NUMBER in (await daemon.status())["directory"]["numbers"]

    await eventually(listed, "the directory lists the new number")
    call = await sim.place_call(IVANOV_CLIENT, NEW_NUMBER)
    assert await outcome_of(call) == "transferred"
    assert routed_to(call) == IVANOV_WP


async def test_new_number_is_parked_with_park_all(start_daemon: StartDaemon) -> None:
    """routing.park: all: a number that numbersChanged brings is parked too, then routed."""
    daemon = await start_daemon(park="all")
    sim = daemon.sim
    await eventually(lambda: len(sim.requests_to("setParkingNumbers")) == 1, "parking at start-up")
    await sim.set_numbers([*DOC_NUMBERS, NEW_NUMBER])  # sends numbersChanged
    await eventually(
        lambda: len(sim.requests_to("setParkingNumbers")) == 2, "the new number parked"
    )
    assert sim.requests_to("setParkingNumbers")[1].body == {
        "params": {"numbers": [NEW_NUMBER], "isParking": True}
    }
    call = await sim.place_call(PREFIX_CALLER, NEW_NUMBER)
    assert await outcome_of(call) == "transferred"
    assert routed_to(call) == PETROVA_WP


async def test_workplaces_changed_refreshes_workplaces(daemon: RunningDaemon) -> None:
    """workplacesChanged: a manager whose workplace MTT no longer lists is skipped."""
    sim = daemon.sim
    remaining = {w: n for w, n in sim.pbx.workplaces.items() if w != IVANOV_WP}
    await sim.set_workplaces(remaining)

    async def refreshed() -> bool:
        workplaces = (await daemon.status())["directory"]["workplaces"]
        return IVANOV_WP not in {w["workplace"] for w in workplaces}

    await eventually(refreshed, "the directory dropped the workplace")
    call = await sim.place_call(IVANOV_CLIENT, NUMBER)
    assert await outcome_of(call) == "transferred"
    assert routed_to(call) == SIDOROV_WP


@pytest.mark.parametrize(
    ("park", "parked"),
    [("all", sorted(DOC_NUMBERS)), (["+7 (499) 649-78-03"], [NUMBER])],
    ids=["all", "one-number"],
)
async def test_park_switches_parking_on_at_start(
    sim: Simulator, start_daemon: StartDaemon, park: str | list[str], parked: list[str]
) -> None:
    """routing.park: setParkingNumbers(isParking: true) for those numbers at start-up."""
    sim.set_parking(DOC_NUMBERS, False)  # as if nobody had switched parking on in MTT yet
    daemon = await start_daemon(park=park, wait_ready=False)
    await eventually(lambda: bool(daemon.sim.requests_to("setParkingNumbers")), "setParkingNumbers")
    request = daemon.sim.requests_to("setParkingNumbers")[0]
    assert isinstance(request.body, dict)
    assert request.body == {"params": {"numbers": parked, "isParking": True}}
    assert request.status == 200
    assert sorted(daemon.sim.pbx.parked) == parked

    async def shown() -> bool:
        return bool((await daemon.status())["directory"]["parked_numbers"] == parked)

    await eventually(shown, "/status lists the parked numbers")


# -- MTT misbehaving ---------------------------------------------------------------------------


async def test_refused_transfer_goes_to_the_next_candidate(daemon: RunningDaemon) -> None:
    """transferCall answered 400 once (certainly not applied): the fallback gets the call."""
    daemon.sim.faults.set("transferCall", EndpointFault(status=400, count=1))
    call = await daemon.sim.place_call(IVANOV_CLIENT, NUMBER)
    assert await outcome_of(call) == "transferred"
    assert routed_to(call) == SIDOROV_WP
    assert commands(daemon, call.id) == [400, 200]
    await daemon.wait_decisions(1)
    assert daemon.decisions("transferred") == 1
    assert daemon.sample("mtt_router_api_requests_total", method="transferCall", code="400") == 1


async def test_transfer_answered_5xx_gets_no_second_command(daemon: RunningDaemon) -> None:
    """transferCall answered 500 (MTT may have applied it): no further command; outcome error."""
    daemon.sim.faults.set("transferCall", EndpointFault(status=500, count=1))
    call = await daemon.sim.place_call(IVANOV_CLIENT, NUMBER)
    await daemon.wait_decisions(1)
    assert daemon.decisions("error") == 1
    assert commands(daemon, call.id) == [500]
    assert commands(daemon, call.id, "terminateCall") == []


async def test_every_transfer_refused_releases_the_call_to_the_pbx(daemon: RunningDaemon) -> None:
    """Every candidate refused with time left: terminateCall (no 5 s of silence); outcome error."""
    daemon.sim.faults.set("transferCall", EndpointFault(status=400))
    call = await daemon.sim.place_call(IVANOV_CLIENT, NUMBER)
    assert await outcome_of(call) == "terminated"
    assert commands(daemon, call.id) == [400, 400]  # ivanov, then fallback sidorov
    assert commands(daemon, call.id, "terminateCall") == [200]
    await daemon.wait_decisions(1)
    assert daemon.decisions("error") == 1


async def test_mtt_slower_than_the_budget_is_a_missed_window(daemon: RunningDaemon) -> None:
    """transferCall slower than the budget: missed_window, the PBX routes the call, no crash."""
    daemon.sim.faults.set("transferCall", EndpointFault(latency_ms=1500, count=1))
    call = await daemon.sim.place_call(IVANOV_CLIENT, NUMBER)
    await daemon.wait_decisions(1)
    assert daemon.decisions("missed_window") == 1
    assert await finished(call) == "pbx_timeout"
    # Nothing else is attempted once the budget is spent.
    assert commands(daemon, call.id, "terminateCall") == []
    assert len(daemon.sim.requests_to("transferCall")) == 1
    # MTT got the transfer after its window and carried it out on the live call: a violation
    # the daemon could not prevent (it sent the command inside its budget).
    daemon.expect_violation(call)
    await eventually(lambda: call.late, "MTT got the transfer after its window")
    assert [v.reason for v in daemon.sim.violations()] == ["after_window"]
    # The daemon carries on: the next call is routed normally.
    call = await daemon.sim.place_call(IVANOV_CLIENT, NUMBER)
    assert await outcome_of(call) == "transferred"
    assert (await daemon.admin("/healthz"))[0] == 200


async def test_without_login_calls_are_not_transferred(start_daemon: StartDaemon) -> None:
    """No token: the number list is unknown, so only the numbers routing.park names count as
    parked; such a call gets no command (outcome error), any other waits out its window."""
    daemon = await start_daemon(authorised=False, wait_ready=False, park=[NUMBER])
    call = await daemon.sim.place_call(IVANOV_CLIENT, NUMBER)
    await daemon.wait_decisions(1)
    assert daemon.decisions("error") == 1
    assert await finished(call) == "pbx_timeout"
    other = await daemon.sim.place_call(IVANOV_CLIENT, OTHER_NUMBER)
    assert await finished(other) == "pbx_timeout"
    assert daemon.decisions() == 1  # the number routing.park does not name was left alone
    assert daemon.sim.requests_to("transferCall") == []
    assert daemon.sim.requests_to("terminateCall") == []
    code, body = await daemon.admin("/readyz")
    assert (code, body["checks"]["numbers"].startswith("unknown: not fetched yet")) == (503, True)
    assert (await daemon.admin("/healthz"))[0] == 200
    # After the operator logs in, calls are routed again.
    async with daemon.http.get(daemon.admin_url + "/oauth/start") as resp:
        assert resp.status == 200
    await daemon.wait_directory()
    call = await daemon.sim.place_call(IVANOV_CLIENT, OTHER_NUMBER)
    assert await outcome_of(call) == "transferred"


# -- rules changing under a running daemon -----------------------------------------------------


async def test_rules_invalid_at_start_release_calls_to_the_pbx(start_daemon: StartDaemon) -> None:
    """No valid rules: every parked call is released to the PBX at once (terminateCall)."""
    daemon = await start_daemon(rules=INVALID_RULES, wait_ready=False)
    await daemon.wait_directory()
    call = await daemon.sim.place_call(IVANOV_CLIENT, NUMBER)
    assert await outcome_of(call) == "terminated"
    await daemon.wait_decisions(1)
    assert daemon.decisions("fallback_pbx") == 1


async def test_rules_file_edits_valid_applied_invalid_kept(daemon: RunningDaemon) -> None:
    """A valid edit is applied; an invalid one keeps the last good rules and says why."""
    replace_file(
        daemon.rules_path,
        RULES.replace('"+7 921 946-27-61": ivanov', '"+7 921 946-27-61": petrova'),
    )

    async def version(v: int) -> bool:
        return bool((await daemon.status())["rules"]["version"] == v)

    await eventually(lambda: version(2), "the edit is loaded")
    call = await daemon.sim.place_call(IVANOV_CLIENT, NUMBER)
    assert await finished(call) == "transferred"
    assert routed_to(call) == PETROVA_WP

    replace_file(daemon.rules_path, INVALID_RULES)
    await eventually(
        lambda: daemon.sample("mtt_router_rules_reloads_total", result="error") == 1,
        "the invalid edit is rejected",
    )
    status = await daemon.status()
    assert (status["rules"]["version"], status["rules"]["loaded"]) == (2, True)
    last_error = status["rules"]["last_error"]
    assert last_error.startswith(f"{daemon.rules_path}:")
    assert "nobody" in last_error
    assert (await daemon.admin("/readyz"))[0] == 200  # the last good rules still serve
    call = await daemon.sim.place_call(IVANOV_CLIENT, NUMBER)
    assert await outcome_of(call) == "transferred"
    assert call.command is not None
    assert call.command.workplace == PETROVA_WP  # the last good rules (version 2)

    replace_file(daemon.rules_path, RULES)
    await eventually(lambda: version(3), "the fixed file is loaded")
    assert (await daemon.status())["rules"]["last_error"] is None
    assert daemon.sample("mtt_router_rules_reloads_total", result="ok") == 3


async def test_sighup_reloads_the_rules(
    start_daemon: StartDaemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGHUP reloads the rules file at once (the file watcher is slowed out of the way)."""
    monkeypatch.setattr(source, "FILE_POLL_INTERVAL_S", 3600.0)
    daemon = await start_daemon()
    replace_file(
        daemon.rules_path,
        RULES.replace('"+7 921 946-27-61": ivanov', '"+7 921 946-27-61": petrova'),
    )
    os.kill(os.getpid(), signal.SIGHUP)

    async def reloaded() -> bool:
        return bool((await daemon.status())["rules"]["version"] == 2)

    await eventually(reloaded, "SIGHUP reloaded the rules")
    call = await daemon.sim.place_call(IVANOV_CLIENT, NUMBER)
    assert await outcome_of(call) == "transferred"
    assert routed_to(call) == PETROVA_WP


# -- stopping ----------------------------------------------------------------------------------


async def test_stop_lets_an_inflight_transfer_finish(start_daemon: StartDaemon) -> None:
    """Stopping (SIGTERM) while MTT is slow to answer transferCall: it completes, exit code 0."""
    daemon = await start_daemon(budget_ms=900)
    daemon.sim.faults.set("transferCall", EndpointFault(latency_ms=400))
    call = await daemon.sim.place_call(IVANOV_CLIENT, NUMBER)
    await eventually(lambda: bool(daemon.sim.requests_to("transferCall")), "transferCall sent")
    assert routed_to(call) is None  # MTT has not answered yet
    assert await daemon.stop() == 0
    # serve() returned only after MTT's answer: the transfer was carried out and counted.
    assert (call.outcome, routed_to(call)) == ("transferred", IVANOV_WP)
    assert daemon.decisions("transferred") == 1


async def test_rules_pointing_at_unlisted_workplaces_are_reported(
    start_daemon: StartDaemon,
) -> None:
    """A manager whose workplace MTT does not list is counted (and logged) once both are known."""
    rules = RULES.replace(f'"{SIDOROV_WP}"', '"883149999999999"')
    daemon = await start_daemon(rules=rules)
    await daemon.wait_directory()

    async def reported() -> bool:
        return daemon.sample("mtt_router_rules_entries", kind="unlisted_workplaces") == 1.0

    await eventually(reported, "the unlisted workplace is counted")
