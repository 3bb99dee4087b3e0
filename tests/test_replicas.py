"""Two `mtt-router run` processes sharing one Redis and one `mtt-router simulate` process.

What the replicas share (claims, tokens and their refresh lock, OAuth states, rules, the client
map, the directory) is checked end to end through real processes: the simulator POSTs to a
balancer (tests/fixtures/replicas.py) that forwards to one replica, to both, or round-robin.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterable
from typing import Any, Literal
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.fixtures.replicas import (
    ADMIN_TOKEN,
    BUDGET_MS,
    IVANOV_CLIENT,
    IVANOV_WP,
    KUZNETSOVA_WP,
    NUMBER,
    OTHER_NUMBER,
    PETROVA_CLIENT,
    PETROVA_WP,
    RULES,
    SIDOROV_WP,
    UNKNOWN_CALLER,
    Cluster,
    Replica,
)
from tests.polling import eventually

Via = Literal["both", "rr"] | int

RULES_V2 = RULES.replace('"+7 921 946-27-61": ivanov', '"+7 921 946-27-61": petrova')
"""RULES with the ivanov client given to petrova."""
RULES_V3 = RULES_V2.replace("clients:\n", 'clients:\n  "+7 916 999-99-99": kuznetsova\n')
"""RULES_V2 and one more client (so ``/status`` counts tell it apart)."""


async def route(cluster: Cluster, caller: str, via: Via, callee: str = NUMBER) -> dict[str, Any]:
    """Place a call whose notifications go ``via`` the balancer; its record once decided."""
    cluster.lb.mode = via
    call_id = await cluster.sim.place(caller, callee)
    return await cluster.sim.outcome(call_id)


def transferred_to(record: dict[str, Any]) -> str | None:
    """The workplace the call was transferred to (``None`` if it was not transferred)."""
    if record["outcome"] != "transferred":
        return None
    return str(record["command"]["workplace"])


def decided_in_time(record: dict[str, Any]) -> bool:
    """One command accepted within the parking window, none refused."""
    return (
        record["outcome"] in ("transferred", "terminated")
        and not record["late"]
        and record["refused"] == []
    )


async def total(replicas: Iterable[Replica], name: str, **labels: str) -> float:
    """A metric summed over replicas."""
    return sum([await r.metric(name, **labels) for r in replicas])


async def decisions(replica: Replica) -> float:
    """Decisions that sent a command (transferred or released to the PBX)."""
    return await replica.decisions("transferred") + await replica.decisions("fallback_pbx")


async def storage_errors(replica: Replica) -> float:
    """``mtt_router_storage_errors_total`` summed over ``op``."""
    samples = await replica.metrics()
    return sum(v for (name, _), v in samples.items() if name == "mtt_router_storage_errors_total")


def callers(count: int, start: int = 0) -> list[str]:
    """Distinct callers with no personal manager (fallback: sidorov, or the PBX when he is busy)."""
    return [f"+7916{start + i:07d}" for i in range(count)]


async def test_a_notification_delivered_to_both_replicas_is_transferred_once(
    cluster: Cluster,
) -> None:
    """Each `trying` reaches both replicas; the shared claim lets exactly one transferCall out."""
    await cluster.store_tokens()
    a, b = await cluster.start_replicas(2)
    cluster.lb.mode = "both"
    who = [IVANOV_CLIENT, PETROVA_CLIENT, UNKNOWN_CALLER, *callers(3)]
    ids = await asyncio.gather(*(cluster.sim.place(caller) for caller in who))
    records = [await cluster.sim.outcome(i) for i in ids]

    assert [decided_in_time(r) for r in records] == [True] * 6
    assert [transferred_to(r) for r in records[:3]] == [IVANOV_WP, PETROVA_WP, SIDOROV_WP]
    transfers = await cluster.sim.requests("transferCall")
    terminates = await cluster.sim.requests("terminateCall")
    sent = sorted(r["body"]["params"]["call"]["id"] for r in transfers + terminates)
    assert sent == sorted(ids)
    tryings = [
        await r.metric("mtt_router_notifications_total", event="callNotifications", state="trying")
        for r in (a, b)
    ]
    assert tryings == [6, 6]  # both replicas got every call's `trying`
    assert await total((a, b), "mtt_router_decisions_total", outcome="duplicate") == 6
    assert await decisions(a) + await decisions(b) == 6


@pytest.mark.parametrize(
    ("replica_sim_args", "revoke"),
    [(["--access-ttl-s", "6"], False), ([], True)],
    ids=["expires", "revoked"],
)
async def test_an_access_token_ending_under_load_costs_one_refresh_across_replicas(
    cluster: Cluster, revoke: bool
) -> None:
    """Both replicas under load when the access token ends (its lifetime runs out: both
    refreshers are due at once; or MTT revokes it: a 401 storm on both): one refresh reaches
    MTT, both replicas use its answer, and no call misses its window."""
    await cluster.store_tokens()
    replicas = await cluster.start_replicas(2)
    cluster.lb.mode = "rr"
    ids: list[str] = []
    waves = iter(range(0, 10_000, 4))

    async def wave() -> None:
        batch = callers(4, next(waves))
        ids.extend(await asyncio.gather(*(cluster.sim.place(c) for c in batch)))

    async def versions() -> list[int]:
        return [(await r.status())["tokens"]["version"] for r in replicas]

    await wave()
    if revoke:
        await cluster.sim.faults(revoke_access_tokens=True)
        await asyncio.gather(wave(), wave(), wave())  # a burst: 401s on both replicas at once

        async def both_refreshed() -> bool:
            return await versions() == [2, 2]

        # place() returns once MTT's trying was answered; the decisions, and so the 401s and the
        # refresh, happen in the background: count once both replicas hold the new set.
        await eventually(both_refreshed, "both replicas on the refreshed set", timeout_s=10)
    else:  # refreshed at 80% of 6 s: keep the load on until both replicas hold the new set

        async def refreshed() -> bool:
            if await versions() == [2, 2]:
                return True
            await wave()
            return False

        await eventually(refreshed, "both replicas on the refreshed set", timeout_s=10)
    # Counted as soon as both hold the new set: with a 6 s token the *next* refresh falls due
    # 4.8 s later, which a slow machine could reach during the waves below.
    assert await cluster.sim.refresh_grants() == 1
    assert await total(replicas, "mtt_router_token_refreshes_total", result="ok") == 1
    assert await total(replicas, "mtt_router_token_refreshes_total", result="error") == 0
    # The other replica found the new set in Redis (under the refresh lock) and took it.
    assert await total(replicas, "mtt_router_token_refreshes_total", result="skipped") == 1
    before = [await decisions(r) for r in replicas]
    for _ in range(4):
        await wave()
    records = [await cluster.sim.outcome(i) for i in ids]

    assert [r["id"] for r in records if not decided_in_time(r)] == []
    after = [await decisions(r) for r in replicas]
    # Both keep working (16 calls after the refresh; the balancer alternates every POST).
    assert [x - y >= 3 for x, y in zip(after, before, strict=True)] == [True, True]
    assert await total(replicas, "mtt_router_decisions_total", outcome="error") == 0


async def test_rules_pushed_to_redis_reach_both_replicas_within_a_second(
    cluster: Cluster,
) -> None:
    """Nothing pushed: not ready ("no rules"), every parked call released to the PBX. Each push
    is routed by on both replicas within 1 s."""
    await cluster.store_tokens()
    a, b = await cluster.start_replicas(2, rules_source="redis", ready=False)
    for replica in (a, b):
        await cluster.wait_up(replica, ready=False)
        code, body = await replica.readyz()
        assert (code, body["checks"]["rules"], body["checks"]["token"]) == (503, "no rules", "ok")

    released = [await route(cluster, IVANOV_CLIENT, via) for via in (0, 1)]
    assert [r["outcome"] for r in released] == ["terminated", "terminated"]
    assert [await r.decisions("fallback_pbx") for r in (a, b)] == [1, 1]

    timings = []
    for version, text, expected in ((1, RULES, IVANOV_WP), (2, RULES_V2, PETROVA_WP)):
        await cluster.push_rules(text)
        pushed_at = time.monotonic()

        async def both_have(version: int = version) -> bool:
            return [await a.rules_version(), await b.rules_version()] == [version, version]

        await eventually(both_have, f"both replicas on rules version {version}", timeout_s=1.0)
        timings.append(time.monotonic() - pushed_at)
        routed = [await route(cluster, IVANOV_CLIENT, via) for via in (0, 1)]
        assert [transferred_to(r) for r in routed] == [expected, expected]
    assert [(await r.readyz())[0] for r in (a, b)] == [200, 200]
    print(f"\nrules push -> both replicas on the new version: {[f'{t:.3f}' for t in timings]} s")


async def test_client_map_edits_are_followed_by_the_next_call_on_any_replica(
    cluster: Cluster,
) -> None:
    """`clients set`/`del` and PUT/DELETE /clients/{number} on one replica: the next call on
    either replica follows the map, even where the number's absence was cached."""
    await cluster.store_tokens()
    a, _ = await cluster.start_replicas(2, admin_tokens=[ADMIN_TOKEN, None])
    config = str(cluster.cli_config)

    # Both replicas look the caller up (a cached miss): the fallback manager gets the call.
    assert [transferred_to(await route(cluster, UNKNOWN_CALLER, v)) for v in (0, 1)] == [
        SIDOROV_WP
    ] * 2
    code, _, err = await cluster.cli(
        "clients", "set", UNKNOWN_CALLER, "kuznetsova", "--config", config
    )
    assert code == 0, err
    assert transferred_to(await route(cluster, UNKNOWN_CALLER, 1)) == KUZNETSOVA_WP
    assert transferred_to(await route(cluster, UNKNOWN_CALLER, 0)) == KUZNETSOVA_WP
    code, _, err = await cluster.cli("clients", "del", UNKNOWN_CALLER, "--config", config)
    assert code == 0, err
    assert transferred_to(await route(cluster, UNKNOWN_CALLER, 1)) == SIDOROV_WP

    # The admin API of replica A; the calls go to replica B.
    url = f"{a.admin_url}/clients/{PETROVA_CLIENT}"
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    async with cluster.http.put(url, json={"manager": "sidorov"}, headers=auth) as resp:
        assert (resp.status, await resp.json()) == (
            200,
            {"number": "78124241500", "manager": "sidorov"},
        )
    assert transferred_to(await route(cluster, PETROVA_CLIENT, 1)) == SIDOROV_WP
    assert await a.get(f"/clients/{PETROVA_CLIENT}", headers=auth) == (
        200,
        {"number": "78124241500", "manager": "sidorov"},
    )
    async with cluster.http.delete(url, headers=auth) as resp:
        assert resp.status == 200
    assert transferred_to(await route(cluster, PETROVA_CLIENT, 1)) == PETROVA_WP
    assert (await a.get(f"/clients/{PETROVA_CLIENT}", headers=auth))[0] == 404


async def test_client_endpoints_need_the_configured_bearer_token(cluster: Cluster) -> None:
    """/clients/{number}: 401 without or with a wrong token, 422 for an unknown manager, and no
    such route at all on a replica configured without a token."""
    await cluster.store_tokens()
    a, b = await cluster.start_replicas(2, admin_tokens=[ADMIN_TOKEN, None])
    path = f"/clients/{IVANOV_CLIENT}"
    good = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    wrong = {"Authorization": f"Bearer {ADMIN_TOKEN}x"}

    async def put(replica: Replica, body: Any, headers: dict[str, str]) -> int:
        async with cluster.http.put(replica.admin_url + path, json=body, headers=headers) as r:
            return r.status

    assert (await a.get(path))[0] == 401
    assert (await a.get(path, headers=wrong))[0] == 401
    assert await put(a, {"manager": "petrova"}, {}) == 401
    assert await put(a, {"manager": "petrova"}, wrong) == 401
    assert await put(a, {"manager": "nobody"}, good) == 422
    assert await put(a, {"manager": ""}, good) == 400
    assert (await a.get(path, headers=good))[0] == 404  # nothing stored by the refused PUTs
    assert (await b.get(path, headers=good))[0] == 404
    assert await put(b, {"manager": "petrova"}, good) == 404
    async with cluster.http.delete(b.admin_url + path, headers=good) as resp:
        assert resp.status == 404


async def test_oauth_callback_on_another_replica_authorises_both(cluster: Cluster) -> None:
    """GET /oauth/start on replica A; MTT's redirect lands on replica B, which redeems the state
    (from Redis) and stores the tokens; A uses them. The state works once."""
    a, b = await cluster.start_replicas(2, ready=False)
    for replica in (a, b):
        await cluster.wait_up(replica, ready=False)
        code, body = await replica.readyz()
        assert code == 503
        assert body["checks"]["token"].startswith("needs login"), body

    async with cluster.http.get(a.admin_url + "/oauth/start", allow_redirects=False) as resp:
        assert resp.status == 302
        authorize = resp.headers["Location"]
    async with cluster.http.get(authorize, allow_redirects=False) as resp:
        assert resp.status == 302
        callback = urlsplit(resp.headers["Location"])
    assert f"{callback.scheme}://{callback.netloc}{callback.path}" == cluster.redirect_uri
    assert set(parse_qs(callback.query)) == {"code", "state"}
    async with cluster.http.get(f"{b.public_url}{callback.path}?{callback.query}") as resp:
        assert resp.status == 200, await resp.text()
    login_at = time.monotonic()

    async def ready(replica: Replica) -> bool:
        return (await replica.readyz())[0] == 200

    await eventually(lambda: ready(b), "B ready after its own callback", timeout_s=2.0)
    await eventually(lambda: ready(a), "A adopts the tokens B stored")
    adopted_s = time.monotonic() - login_at
    assert transferred_to(await route(cluster, IVANOV_CLIENT, 0)) == IVANOV_WP
    async with cluster.http.get(f"{a.public_url}{callback.path}?{callback.query}") as resp:
        assert resp.status == 400  # the state was redeemed (GETDEL) by B
    assert (await cluster.sim.stats())["grants"]["authorization_code"] == 1
    print(f"\nlogin on B -> A ready: {adopted_s:.2f} s")


async def test_numbers_changed_on_one_replica_reaches_the_other(cluster: Cluster) -> None:
    """numbersChanged delivered to A only: A refetches and parks the new number, B learns the
    numbers through Redis (one externalNumbersInfo request) and routes calls to it."""
    await cluster.store_tokens()
    a, b = await cluster.start_replicas(2)
    new_number = "74950000000"
    fetched = len(await cluster.sim.requests("externalNumbersInfo"))
    cluster.lb.mode = 0
    changed_at = time.monotonic()
    await cluster.sim.set_numbers([NUMBER, OTHER_NUMBER, new_number])

    async def b_knows() -> bool:
        return new_number in ((await b.status())["directory"]["numbers"] or [])

    await eventually(b_knows, "B lists the new number")
    learnt_s = time.monotonic() - changed_at
    assert len(await cluster.sim.requests("externalNumbersInfo")) == fetched + 1
    assert new_number in (await a.status())["directory"]["parked_numbers"]
    assert transferred_to(await route(cluster, IVANOV_CLIENT, 1, callee=new_number)) == IVANOV_WP
    print(f"\nnumbersChanged on A -> B knows the number: {learnt_s:.3f} s")


@pytest.mark.slow
@pytest.mark.timeout(90)
async def test_redis_outage_keeps_routing_and_state_resumes_after_restart(
    cluster: Cluster,
) -> None:
    """Redis stopped: calls still routed on both replicas (last rules, local claims), /readyz
    503 "storage: down", storage metrics count it. Redis back (empty): ready again, and shared
    claims, rules pushes and pub/sub work again without a restart."""
    await cluster.store_tokens()
    a, b = await cluster.start_replicas(2, rules_source="redis", ready=False)
    await cluster.push_rules(RULES)
    for replica in (a, b):
        await cluster.wait_up(replica)

    # Personal managers never pick up, so are never on a call: a call from their client goes to
    # them by the rules. (While Redis is down, a replica that saw a call connect but not finish,
    # delivered to the other one, takes the workplace for busy: it knows no better.)
    for workplace in (IVANOV_WP, PETROVA_WP):
        await cluster.sim.set_answer(workplace, None)
    cluster.lb.mode = "rr"
    who = [IVANOV_CLIENT, PETROVA_CLIENT, UNKNOWN_CALLER, *callers(5)]

    async def wave() -> list[dict[str, Any]]:
        ids = await asyncio.gather(*(cluster.sim.place(c) for c in who))
        return [await cluster.sim.outcome(i) for i in ids]

    up = await wave()  # for comparison
    _, records = await asyncio.gather(cluster.stop_redis(), wave())  # stopped mid-wave
    for replica in (a, b):

        async def storage_down(replica: Replica = replica) -> bool:
            code, body = await replica.readyz()
            return code == 503 and body["checks"]["storage"] == "down"

        await eventually(storage_down, f"{replica.name} /readyz says storage down", timeout_s=5.0)
    down = await wave() + await wave()
    records += down
    assert [r["id"] for r in up + records if not decided_in_time(r)] == []
    assert [transferred_to(r) for r in down[:2]] == [IVANOV_WP, PETROVA_WP]
    latencies = sorted(r["decision_latency_s"] for r in down)
    assert latencies[-1] < BUDGET_MS / 1000
    for replica in (a, b):
        assert replica.proc.alive
        assert await replica.metric("mtt_router_storage_up") == 0
        assert await storage_errors(replica) > 0
        assert (await replica.status())["rules"]["version"] == 1  # the last known rules

    await cluster.start_redis()  # empty: this Redis keeps nothing across a restart
    restarted_at = time.monotonic()
    for replica in (a, b):

        async def ready(replica: Replica = replica) -> bool:
            return (await replica.readyz())[0] == 200

        await eventually(ready, f"{replica.name} ready again", timeout_s=5.0)
    ready_s = time.monotonic() - restarted_at
    assert [await r.metric("mtt_router_storage_up") for r in (a, b)] == [1, 1]

    # Presence written back by both replicas converges: every call has ended, nobody is busy
    # (connected and finished of a call went to different replicas while Redis was down).
    async def nobody_busy() -> bool:
        return [(await r.status())["engine"]["busy"] for r in (a, b)] == [[], []]

    await eventually(nobody_busy, "no workplace left busy after the write-back", timeout_s=5.0)

    # Claims are shared again: one command for a notification both replicas receive.
    duplicates = await total((a, b), "mtt_router_decisions_total", outcome="duplicate")
    assert decided_in_time(await route(cluster, UNKNOWN_CALLER, "both"))
    assert await total((a, b), "mtt_router_decisions_total", outcome="duplicate") == duplicates + 1
    # A push to the new (empty) Redis is version 1 again, and still followed by both.
    await cluster.push_rules(RULES_V3)
    pushed_at = time.monotonic()

    async def both_follow() -> bool:
        counts = [(await r.status())["rules"]["counts"]["clients"] for r in (a, b)]
        return counts == [3, 3]

    await eventually(
        both_follow, "both replicas load the rules pushed after the restart", timeout_s=2.0
    )
    followed_s = time.monotonic() - pushed_at
    routed = [await route(cluster, IVANOV_CLIENT, via) for via in (0, 1)]
    assert [transferred_to(r) for r in routed] == [PETROVA_WP, PETROVA_WP]
    # The client map: written to the new Redis, followed by both.
    config = str(cluster.cli_config)
    code, _, err = await cluster.cli(
        "clients", "set", UNKNOWN_CALLER, "kuznetsova", "--config", config
    )
    assert code == 0, err
    routed = [await route(cluster, UNKNOWN_CALLER, via) for via in (0, 1)]
    assert [transferred_to(r) for r in routed] == [KUZNETSOVA_WP, KUZNETSOVA_WP]

    def ms(values: list[float]) -> str:
        return f"p50 {values[len(values) // 2] * 1000:.0f} ms, max {values[-1] * 1000:.0f} ms"

    print(
        f"\ndecision latency, Redis up: {ms(sorted(r['decision_latency_s'] for r in up))}; "
        f"Redis down ({len(down)} calls): {ms(latencies)}; "
        f"ready {ready_s:.2f} s after the restart; new rules followed in {followed_s:.3f} s"
    )


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_a_million_row_import_while_both_replicas_route(cluster: Cluster) -> None:
    """`clients import` of 1,000,000 rows while calls keep coming to both replicas: every call
    is still decided in time, and afterwards both route imported callers by the map."""
    await cluster.store_tokens()
    await cluster.start_replicas(2)
    path = cluster.tmp_path / "million.csv"
    rows = "\n".join(f"+7916{i:07d},kuznetsova" for i in range(1_000_000))
    await asyncio.to_thread(path.write_text, f"number,manager\n{rows}\n", encoding="utf-8")
    cluster.lb.mode = "rr"
    config = str(cluster.cli_config)
    importing = asyncio.create_task(cluster.cli("clients", "import", str(path), "--config", config))
    started = time.monotonic()
    ids: list[str] = []
    while not importing.done():
        ids.append(await cluster.sim.place(f"+7916{len(ids) * 7919 % 1_000_000:07d}"))
        await asyncio.sleep(0.05)
    code, _, err = await importing
    import_s = time.monotonic() - started
    assert code == 0, err
    during = [await cluster.sim.outcome(i) for i in ids]
    assert [r["id"] for r in during if not decided_in_time(r)] == []
    code, out, err = await cluster.cli("clients", "count", "--json", "--config", config)
    assert (code, json.loads(out)) == (0, {"count": 1_000_000}), err
    last = "+7 916 099-99-99"
    routed = [await route(cluster, last, via) for via in (0, 1)]
    assert [transferred_to(r) for r in routed] == [KUZNETSOVA_WP, KUZNETSOVA_WP]
    latencies = sorted(r["decision_latency_s"] for r in during)
    print(
        f"\n1,000,000-row import: {import_s:.1f} s (CLI process); {len(during)} calls meanwhile, "
        f"decision latency p50 {latencies[len(latencies) // 2] * 1000:.0f} ms, "
        f"max {latencies[-1] * 1000:.0f} ms"
    )
