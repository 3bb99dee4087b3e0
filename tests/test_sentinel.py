"""Redis Sentinel failover under traffic, with real processes.

A primary, a replica and three sentinels (``redis-server --sentinel``, down-after 1 s), all with
passwords; two `mtt-router run` replicas on ``redis+sentinel://``; calls flowing from the
simulator. The primary is SIGKILLed mid-traffic. Both daemons keep routing through the failover
(local claims, their own presence view, tokens from memory), then follow the sentinels to the
promoted replica without a restart, and what was written before the kill is still there: the
client map, and the token set written just before it (a token write waits for the replica).

Run with ``-s`` to see the figures (calls placed and transferred during the failover, seconds
until both daemons use the new primary).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from router.config import load_config
from router.doctor_sentinel import check_sentinel
from router.metrics import Metrics
from router.mtt.tokens import TokenSet
from router.state.redis import open_redis_stores
from tests.fixtures.redis_ha import HaSet
from tests.fixtures.replicas import (
    IVANOV_CLIENT,
    IVANOV_WP,
    KUZNETSOVA_WP,
    NUMBER,
    OTHER_NUMBER,
    PETROVA_WP,
    SIDOROV_WP,
    UNKNOWN_CALLER,
    Cluster,
    Replica,
)
from tests.polling import eventually

LEARNER, LEARNER_N = "+79035550100", "79035550100"
"""A caller the daemons learn (sidorov's) before the failover: a long enough call."""
MAP_CLIENT = "+79035550101"
"""A client only the Redis client map knows (kuznetsova's), set before the failover."""
NEW_MAP_CLIENT = "+79035550102"
"""A client set after the failover: only the new primary has it."""
PLACE_EVERY_S = 0.1
CALLERS = [IVANOV_CLIENT, MAP_CLIENT, UNKNOWN_CALLER]
RULES = f"""\
version: 2
timezone: Europe/Moscow
managers:
  ivanov: {{workplace: "{IVANOV_WP}"}}
  petrova: {{workplace: "{PETROVA_WP}"}}
  sidorov: {{workplace: "{SIDOROV_WP}"}}
  kuznetsova: {{workplace: "{KUZNETSOVA_WP}"}}
clients:
  "+7 921 946-27-61": ivanov
learn:
  min_talk_s: 0.3
  ttl_days: 30
lines:
  "{OTHER_NUMBER}":
    fallback: {{managers: [kuznetsova], otherwise: pbx}}
fallback:
  managers: [sidorov]
  otherwise: pbx
"""
"""Version 2 with ``learn`` (calls of 0.3 s and more teach; the traffic's last 50 ms): the
fallback sidorov, OTHER_NUMBER's kuznetsova."""


@pytest.fixture
def ha(tmp_path: Path) -> Iterator[HaSet]:
    """Primary, replica, three sentinels; passwords on the data nodes and on the sentinels."""
    ha = HaSet(tmp_path / "ha", password="data-secret", sentinel_password="sentinel-secret")
    try:
        ha.start()
        yield ha
    finally:
        ha.stop()


def primary_lines(replica: Replica) -> list[dict[str, Any]]:
    """The replica's ``storage_primary`` log lines (JSON), oldest first."""
    lines = []
    for line in replica.proc.log.read_text(encoding="utf-8", errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            entry = json.loads(line)
            if isinstance(entry, dict) and entry.get("event") == "storage_primary":
                lines.append(entry)
    return lines


def decided_in_time(record: dict[str, Any]) -> bool:
    """Routed or released by one accepted command inside the window, or left to the PBX; never
    a late or refused command."""
    return (
        record["outcome"] in ("transferred", "terminated", "pbx_timeout")
        and not record["late"]
        and record["refused"] == []
        and record["violations"] == []
    )


async def subscriptions(ha: HaSet, port: int) -> dict[str, int]:
    """Subscribers per ``mtt-router:`` channel on the data node at ``port``."""
    node = ha.primary if ha.primary.port == port else ha.replica
    client = node.client()
    try:
        channels = await client.pubsub_channels("mtt-router:*")
        return {str(name): count for name, count in await client.pubsub_numsub(*channels)}
    finally:
        await client.aclose()


@pytest.mark.timeout(90)
async def test_failover_under_traffic_loses_nothing(ha: HaSet, cluster: Cluster) -> None:
    cluster.storage = {"storage": ha.url, "redis": ha.redis_section()}
    cli = str(cluster.cli_config)
    stores = await open_redis_stores(load_config(cli), Metrics(), role="cli")
    try:
        issued = TokenSet.from_answer(await cluster.sim.issue_tokens(), now=time.time(), version=1)
        assert await stores.tokens.save(issued, expected_version=None)
        code, _, err = await cluster.cli(
            "clients", "set", MAP_CLIENT, "kuznetsova", "--config", cli
        )
        assert code == 0, err
        cluster.rules_path.write_text(RULES, encoding="utf-8")
        a, b = await cluster.start_replicas(2)
        cluster.lb.mode = 0  # A sees the whole call through, and learns from it
        taught = await cluster.sim.place(LEARNER, NUMBER, talk_ms=700)
        assert (await cluster.sim.outcome(taught))["command"]["workplace"] == SIDOROV_WP
        learned = await eventually(lambda: stores.learned.get(LEARNER_N), "the lesson stored")
        assert learned.manager == "sidorov"
        await eventually(lambda: asyncio.to_thread(ha.discovered), "sentinels see it all")
        old, new = f"127.0.0.1:{ha.primary.port}", f"127.0.0.1:{ha.replica.port}"
        await asyncio.gather(*(using(r, old, first=True) for r in (a, b)))
        before = await check_sentinel(load_config(cli))
        assert before.status == "ok", before
        subscribed = await subscriptions(ha, ha.primary.port)
        assert subscribed, "no channel subscribed"
        assert set(subscribed.values()) == {2}, subscribed  # each channel: a and b

        cluster.lb.mode = "rr"  # each notification to one replica, as MTT sends it once
        placed: list[tuple[str, float]] = []
        stop = asyncio.Event()

        async def traffic() -> None:
            while not stop.is_set():
                caller = CALLERS[len(placed) % len(CALLERS)]
                placed.append((await cluster.sim.place(caller), time.time()))
                await asyncio.sleep(PLACE_EVERY_S)

        flowing = asyncio.create_task(traffic())
        await asyncio.sleep(1.0)
        # The last token write before the crash: acknowledged by the replica before save returns.
        with capture_logs() as logs:
            assert await stores.tokens.save(replace(issued, version=2), expected_version=1)
        assert [e for e in logs if e["event"] == "tokens_not_replicated"] == []
        ha.primary.kill()
        killed_at = time.time()
        await asyncio.gather(*(using(r, new) for r in (a, b)))
        recovered_at = max(
            datetime.fromisoformat(primary_lines(r)[-1]["timestamp"]).timestamp() for r in (a, b)
        )
        await asyncio.gather(*(ready(r) for r in (a, b)))

        async def resubscribed() -> bool:  # pub/sub: every subscriber of both, on the new primary
            return await subscriptions(ha, ha.replica.port) == subscribed

        # Within the subscribers' reconnection backoff (at most 5 s after the failover).
        await eventually(resubscribed, "every subscription on the new primary", timeout_s=15.0)
        resubscribed_s = time.time() - killed_at
        await asyncio.sleep(1.0)
        stop.set()
        await flowing
    finally:
        await stores.aclose()

    records = [await cluster.sim.outcome(call_id) for call_id, _ in placed]
    assert [r["id"] for r in records if not decided_in_time(r)] == []
    during = [
        r for (_, at), r in zip(placed, records, strict=True) if killed_at <= at < recovered_at
    ]
    transferred = [r for r in during if r["outcome"] == "transferred"]
    assert during, "no call was placed during the failover"

    # What was written before the kill is on the new primary.
    stores = await open_redis_stores(load_config(cli), Metrics(), role="cli")
    try:
        loaded = await stores.tokens.load()
        assert loaded is not None
        assert (loaded.version, loaded.access_token) == (2, issued.access_token)
        assert await stores.clients.get(MAP_CLIENT) == "kuznetsova"
        kept = await stores.learned.get(LEARNER_N)
        assert kept is not None
        assert kept.manager == "sidorov"
    finally:
        await stores.aclose()
    # Each daemon reads the new primary: the map, a client set after the failover, the lesson
    # (on OTHER_NUMBER, whose own fallback is kuznetsova), a call each, nobody on a call.
    code, _, err = await cluster.cli("clients", "set", NEW_MAP_CLIENT, "petrova", "--config", cli)
    assert code == 0, err
    expected = {MAP_CLIENT: KUZNETSOVA_WP, NEW_MAP_CLIENT: PETROVA_WP, LEARNER: SIDOROV_WP}
    for index, replica in enumerate((a, b)):
        cluster.lb.mode = index
        for caller, workplace in expected.items():
            await eventually(lambda: idle(a, b), "nobody on a call")
            record = await cluster.sim.outcome(await cluster.sim.place(caller, OTHER_NUMBER))
            assert (record["outcome"], record["command"]["workplace"]) == (
                "transferred",
                workplace,
            ), (replica.name, caller, record["outcome"])
    # doctor: the new primary, and no replica left to fail over to.
    code, out, err = await cluster.cli("doctor", "--config", cli, "--json")
    storage = next(c for c in json.loads(out) if c["name"] == "storage")
    assert storage["status"] == "warn", (storage, err)
    assert f"primary {new} answers, 0 replicas: nothing to fail over to" in storage["detail"]

    print(
        f"\nfailover: {len(placed)} calls placed, {len(during)} during the failover "
        f"({len(transferred)} transferred, "
        f"{sum(r['outcome'] == 'terminated' for r in during)} released, "
        f"{sum(r['outcome'] == 'pbx_timeout' for r in during)} left to the PBX); both daemons on "
        f"the new primary {recovered_at - killed_at:.2f} s after the SIGKILL, every pub/sub "
        f"subscription back within {resubscribed_s:.2f} s; every call decided "
        f"within its window, no violation; tokens v2, the client map and the lesson survived"
    )


async def using(replica: Replica, primary: str, *, first: bool = False) -> None:
    """Until ``replica`` logs that it uses ``primary`` (``first``: as its very first one)."""

    def logged() -> bool:
        seen = [e["primary"] for e in primary_lines(replica)]
        return seen == [primary] if first else seen[-1:] == [primary]

    await eventually(logged, f"{replica.name} uses the primary {primary}", timeout_s=30.0)


async def idle(*replicas: Replica) -> bool:
    """No workplace on a call, as each of ``replicas`` sees it."""
    return all([(await r.status())["engine"]["busy"] == [] for r in replicas])


async def ready(replica: Replica) -> None:
    """Until ``replica``'s /readyz answers 200."""

    async def answers() -> bool:
        code, _ = await replica.readyz()
        return code == 200

    await eventually(answers, f"{replica.name} ready")
