"""The daemon keeps its promises when its surroundings misbehave (found in review)."""

from __future__ import annotations

from router.simulator import EndpointFault
from tests.fixtures.daemon import (
    IVANOV_CLIENT,
    NUMBER,
    RunningDaemon,
    StartDaemon,
    outcome_of,
)
from tests.fixtures.net import RedisServer
from tests.polling import eventually


async def test_starts_while_redis_is_down_and_recovers(
    start_daemon: StartDaemon, redis_server: RedisServer
) -> None:
    """Redis down at start-up: the daemon serves, /readyz says storage is down, then recovers."""
    redis_server.stop()
    daemon = await start_daemon(storage=redis_server.url, authorised=False, wait_ready=False)
    code, body = await daemon.admin("/readyz")
    assert code == 503
    assert body["checks"]["storage"] == "down"
    assert daemon.sample("mtt_router_storage_up") == 0.0

    redis_server.start()

    async def storage_ok() -> bool:
        _, body = await daemon.admin("/readyz")
        return bool(body["checks"]["storage"] == "ok")

    await eventually(storage_ok, "storage answers again")
    assert daemon.sample("mtt_router_storage_up") == 1.0


async def test_transfer_lost_in_flight_gets_no_second_command(daemon: RunningDaemon) -> None:
    """A transfer whose connection broke after sending may have happened: nothing else is sent."""
    daemon.sim.faults.set("transferCall", EndpointFault(drop=True, count=1))
    call = await daemon.sim.place_call(IVANOV_CLIENT, NUMBER)
    await daemon.wait_decisions(1)
    assert daemon.decisions("error") == 1
    assert len(daemon.sim.requests_to("transferCall")) == 1
    assert daemon.sim.requests_to("terminateCall") == []
    assert await outcome_of(call) == "pbx_timeout"


async def test_numbers_changed_during_a_fetch_is_fetched_again(daemon: RunningDaemon) -> None:
    """A numbersChanged arriving while the numbers are being fetched triggers one more fetch."""
    before = len(daemon.sim.requests_to("externalNumbersInfo"))
    daemon.sim.faults.set("externalNumbersInfo", EndpointFault(latency_ms=300, count=1))
    event = {"event": "vpbxNotifications", "result": {"eventType": "numbersChanged"}}
    assert (await daemon.post_event(event))[0] == 200

    async def fetching() -> bool:
        return len(daemon.sim.requests_to("externalNumbersInfo")) > before

    await eventually(fetching, "the first fetch started")
    assert (await daemon.post_event(event))[0] == 200  # arrives during the slow fetch
    await eventually(
        lambda: len(daemon.sim.requests_to("externalNumbersInfo")) >= before + 2,
        "a second fetch after the notification that came mid-fetch",
    )
