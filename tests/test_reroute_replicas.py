"""No-answer re-routes on two `mtt-router run` processes sharing Redis: exactly once, and never
after an answer, even when the ``connected`` reached only the replica that is not watching.

The simulator (a process) counts the transferCall requests it got for the call and classifies each;
the cluster fixture asserts that no command was a violation.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.fixtures.replicas import (
    IVANOV_CLIENT,
    IVANOV_WP,
    NUMBER,
    PETROVA_WP,
    SIDOROV_WP,
    Cluster,
    Replica,
)
from tests.polling import eventually

RINGS_ON = ["--ring-timeout-ms", "20000"]
"""Workplaces ring unanswered far longer than after_s."""


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


async def transfers(cluster: Cluster, call_id: str) -> list[str]:
    """The workplaces of the transferCall requests the simulator received for ``call_id``."""
    found = []
    for request in await cluster.sim.requests("transferCall"):
        params = request["body"]["params"]
        if params["call"]["id"] == call_id:
            found.append(str(params["calleeId"]))
    return found


async def done(cluster: Cluster, call_id: str) -> dict[str, Any]:
    """The simulator's record of the call once every notification of it went out."""

    async def finished() -> dict[str, Any] | None:
        record = await cluster.sim.call(call_id)
        return record if record["phase"] == "done" else None

    return await eventually(finished, f"call {call_id} done", timeout_s=20.0)


async def reroutes(replicas: list[Replica], result: str) -> float:
    """``mtt_router_reroutes_total{result}`` summed over the replicas."""
    return sum([await r.metric("mtt_router_reroutes_total", result=result) for r in replicas])


@pytest.mark.parametrize("replica_sim_args", [RINGS_ON])
async def test_two_replicas_reroute_once(cluster: Cluster) -> None:
    """Both replicas get every notification: the call moves from ivanov to petrova with exactly
    one re-route (two transferCall requests in all), a re-route in the simulator's eyes."""
    cluster.rules_path.write_text(rules(after_s=1), encoding="utf-8")
    await cluster.store_tokens()
    replicas = await cluster.start_replicas(2)
    await cluster.sim.set_answer(IVANOV_WP, None)
    cluster.lb.mode = "both"
    call_id = await cluster.sim.place(IVANOV_CLIENT, NUMBER)
    record = await done(cluster, call_id)
    assert await transfers(cluster, call_id) == [IVANOV_WP, PETROVA_WP]
    assert [c["reason"] for c in record["commands"]] == ["parked", "reroute"]
    assert record["workplace"] == PETROVA_WP
    assert await reroutes(replicas, "transferred") == 1
    assert await reroutes(replicas, "failed") == 0


@pytest.mark.parametrize("replica_sim_args", [RINGS_ON])
async def test_no_reroute_after_an_answer_the_watching_replica_never_saw(
    cluster: Cluster,
) -> None:
    """The ``connected`` reaches only the replica that did not decide: it marks the call answered
    in Redis, so the deciding replica's timer claims nothing and sends nothing."""
    cluster.rules_path.write_text(rules(after_s=2), encoding="utf-8")
    await cluster.store_tokens()
    replicas = await cluster.start_replicas(2)
    await cluster.sim.set_answer(IVANOV_WP, 800)
    cluster.lb.mode = "both"
    body = {"caller": IVANOV_CLIENT, "callee": NUMBER, "talk_ms": 4000}
    call_id = str((await cluster.sim._json("POST", "/_sim/calls", body))["call"]["id"])

    async def decider() -> Replica | None:
        for replica in replicas:
            if await replica.decisions("transferred") == 1:
                return replica
        return None

    deciding = replicas.index(await eventually(decider, "a replica transferred the call"))
    cluster.lb.mode = 1 - deciding  # from now on only the other replica hears of the call
    record = await done(cluster, call_id)
    assert record["workplace"] == IVANOV_WP
    assert await transfers(cluster, call_id) == [IVANOV_WP]
    assert await reroutes(replicas, "transferred") == await reroutes(replicas, "failed") == 0
    connected = {"event": "callNotifications", "state": "connected"}
    heard = [await r.metric("mtt_router_notifications_total", **connected) for r in replicas]
    assert (heard[deciding], heard[1 - deciding]) == (0, 1)
