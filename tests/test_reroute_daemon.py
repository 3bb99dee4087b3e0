"""No-answer re-routes end to end: the daemon, real HTTP, the simulator judging every command.

The client's manager ivanov does not pick up (or declines): the daemon moves the call to his deputy
petrova, and the simulator classifies that second transferCall as a re-route, never a violation
(the fixture asserts there is none). The PBX's own route for the number is kuznetsova, who never
answers: where the PBX takes a call ivanov let go.
"""

from __future__ import annotations

import asyncio

import pytest

from router.simulator import SimCall, SimConfig, Simulator
from tests.fixtures.daemon import (
    IVANOV_CLIENT,
    IVANOV_WP,
    KUZNETSOVA_WP,
    NUMBER,
    PETROVA_WP,
    SIDOROV_WP,
    WAIT_S,
    StartDaemon,
    daemon_sim_config,
    outcome_of,
)
from tests.polling import eventually


def rules(after_s: float) -> str:
    """Version 2: ivanov's deputy is petrova, fallback sidorov; no_answer after ``after_s``."""
    return f"""\
version: 2
timezone: "Europe/Moscow"
managers:
  ivanov: {{workplace: "{IVANOV_WP}", deputy: petrova}}
  petrova: {{workplace: "{PETROVA_WP}"}}
  sidorov: {{workplace: "{SIDOROV_WP}"}}
clients:
  "+7 921 946-27-61": ivanov
no_answer: {{after_s: {after_s}, max_hops: 2}}
fallback:
  managers: [sidorov]
  otherwise: pbx
"""


@pytest.fixture
def sim_config() -> SimConfig:
    """Workplaces ring 10 s before giving up (longer than after_s); the PBX's own route for
    the number is kuznetsova, who never answers."""
    return daemon_sim_config(
        ring_timeout_ms=10_000.0,
        routes={NUMBER: (KUZNETSOVA_WP,)},
        answer_overrides={KUZNETSOVA_WP: None},
    )


def transfers(call: SimCall) -> list[tuple[str | None, str | None]]:
    """Each transferCall the simulator got for ``call``: (workplace, why it was allowed)."""
    return [(c.workplace, c.reason) for c in call.commands if c.kind == "transfer"]


async def test_a_manager_who_does_not_answer_moves_to_his_deputy(
    start_daemon: StartDaemon, sim: Simulator
) -> None:
    """ivanov rings on unanswered: after after_s the call goes to petrova, who answers; the
    second transferCall is a re-route, counted, and the hit rate says "deputy"."""
    daemon = await start_daemon(rules=rules(after_s=1))
    sim.set_answer(IVANOV_WP, None)
    call = await sim.place_call(IVANOV_CLIENT, NUMBER)
    assert await outcome_of(call) == "transferred"
    await asyncio.wait_for(call.wait_done(), WAIT_S)
    assert transfers(call) == [(IVANOV_WP, "parked"), (PETROVA_WP, "reroute")]
    assert (call.tried, call.workplace) == ([IVANOV_WP, PETROVA_WP], PETROVA_WP)
    assert daemon.sample("mtt_router_reroutes_total", result="transferred") == 1
    assert daemon.sample("mtt_router_reroutes_total", result="failed") == 0
    assert daemon.sample("mtt_router_answered_total", by="deputy") == 1
    assert (await daemon.status())["bounds"]["reroutes"]["size"] == 0


async def test_a_manager_who_declines_moves_to_his_deputy_at_once(
    start_daemon: StartDaemon, sim: Simulator
) -> None:
    """ivanov declines (hiding long before after_s): the call, with the PBX now, goes to
    petrova at once; still a re-route."""
    daemon = await start_daemon(rules=rules(after_s=60))
    sim.set_answer(IVANOV_WP, None)
    sim.set_decline(IVANOV_WP, 50)
    call = await sim.place_call(IVANOV_CLIENT, NUMBER)
    assert await outcome_of(call) == "transferred"
    await asyncio.wait_for(call.wait_done(), WAIT_S)
    assert transfers(call) == [(IVANOV_WP, "parked"), (PETROVA_WP, "reroute")]
    assert (call.tried[0], call.tried[-1], call.workplace) == (IVANOV_WP, PETROVA_WP, PETROVA_WP)
    assert daemon.sample("mtt_router_reroutes_total", result="transferred") == 1


async def test_an_answered_call_is_never_rerouted(
    start_daemon: StartDaemon, sim: Simulator
) -> None:
    """ivanov answers and talks past after_s: no second command (it would move a live call)."""
    daemon = await start_daemon(rules=rules(after_s=1))
    call = await sim.place_call(IVANOV_CLIENT, NUMBER, talk_ms=1500)
    await asyncio.wait_for(call.wait_done(), WAIT_S)
    assert transfers(call) == [(IVANOV_WP, "parked")]
    assert call.workplace == IVANOV_WP
    await eventually(lambda: daemon.sample("mtt_router_answered_total", by="personal") == 1, "hit")
    assert daemon.sample("mtt_router_reroutes_total", result="transferred") == 0
