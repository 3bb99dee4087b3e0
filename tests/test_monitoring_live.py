"""The monitoring kit against a real Prometheus scraping a real daemon.

One rig for the module: Redis, `mtt-router simulate` and `mtt-router run` as processes (the admin
listener guarded by ``server.admin_token``), and Debian's Prometheus scraping it every second with
the shipped deploy/prometheus/prometheus.yml (its target and token file rewritten) and evaluating
the shipped alert rules. The daemon is driven through a scenario that gives every outcome
(transferred, fallback_pbx, waited, missed_window, duplicate, error, shadow, shed), a token
refresh, a refused rules edit, a refused request and a storage outage; then the tests judge what
Prometheus made of it: every dashboard panel, every rule, the alerts the scenario must raise and
those it must not.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio
from prometheus_client.parser import text_string_to_metric_families

from tests.fixtures.daemon import OUTCOMES, replace_file
from tests.fixtures.net import RedisServer, free_port
from tests.fixtures.replicas import (
    IVANOV_CLIENT,
    NUMBER,
    OTHER_NUMBER,
    PETROVA_CLIENT,
    RULES,
    UNKNOWN_CALLER,
    Balancer,
    Cluster,
    Replica,
    SimProcess,
    _start_sim,
    spawn,
)
from tests.monitoring_support import (
    DASHBOARD,
    JOB,
    NO_TOKEN_JOB,
    RULES_PATH,
    Prometheus,
    PrometheusError,
    alert_rules,
    dashboard_targets,
    fill,
    promtool,
    referenced_metrics,
    scrape_config,
    variable,
    variable_values,
)
from tests.polling import eventually, eventually_sync

# The module's rig (some 20 s) runs in the first test's setup, within that test's timeout.
pytestmark = pytest.mark.timeout(120)

ADMIN_TOKEN = "monitoring-admin-token-0123456789"
NO_FALLBACK = RULES.replace("  managers: [sidorov]\n", "  managers: []\n")
"""Unknown callers released to the PBX (fallback_pbx)."""
WAIT = NO_FALLBACK.replace("otherwise: pbx", "otherwise: wait")
"""Unknown callers left to wait out the window (waited)."""
INVALID = RULES.replace('"+7 921 946-27-61": ivanov', '"+7 921 946-27-61": nobody')

RAISED = {
    "MttRouterShedding",
    "MttRouterRulesReloadFailing",
    "MttRouterCallModelSurprises",
    "MttRouterFailedDecisions",
}
"""Alerts the scenario raises (pending or firing)."""
QUIET = {
    "MttRouterDown",
    "MttRouterNoDecisions",
    "MttRouterNeedsLogin",
    "MttRouterLoginExpiring",
    "MttRouterStorageDown",
    "MttRouterDecisionsSlow",
    "MttRouterRejectedRising",
}
"""Alerts a healthy daemon with a fresh login and Redis back must not raise."""


@dataclass
class Watched:
    """What the module's rig left for the tests."""

    prometheus: Prometheus
    target: str
    """The daemon's admin listener, as Prometheus names the instance."""
    metrics_text: str
    """The daemon's /metrics after the scenario."""
    storage_down_alert: str
    """MttRouterStorageDown's state seen while Redis was stopped."""


async def drive(
    replica: Replica, sim: SimProcess, rules_path: Path, redis: RedisServer, prometheus: Prometheus
) -> str:
    """The scenario; returns MttRouterStorageDown's state in ``prometheus`` during the outage."""

    async def until(name: str, count: float, **labels: str) -> None:
        async def reached() -> bool:
            return await replica.metric(name, **labels) >= count

        await eventually(reached, f"{name}{labels} >= {count}")

    async def decided(outcome: str, count: int) -> None:
        await until("mtt_router_decisions_total", count, outcome=outcome)

    async def call(caller: str, callee: str = NUMBER) -> str:
        return await sim.place(caller, callee)

    async def over(*call_ids: str) -> None:
        """Until the calls are over and nobody is on a call (the next decision sees everyone)."""
        for call_id in call_ids:

            async def done(call_id: str = call_id) -> bool:
                return bool((await sim.call(call_id))["phase"] == "done")

            await eventually(done, f"call {call_id} over")

        async def free() -> bool:
            return bool((await replica.status())["engine"]["busy"] == [])

        await eventually(free, "every workplace free")

    await sim.faults(expire_access_tokens=True)  # the next API request gets 401: a refresh
    await over(await call(IVANOV_CLIENT))
    await decided("transferred", 1)
    await until("mtt_router_token_refreshes_total", 1, result="ok")
    await over(await call(IVANOV_CLIENT, OTHER_NUMBER))  # not in routing.live_numbers
    await decided("shadow", 1)
    await sim.faults(duplicate_trying=1)
    await over(await call(PETROVA_CLIENT))
    await decided("duplicate", 1)
    await sim.faults(duplicate_trying=0)
    await over(await call(UNKNOWN_CALLER))  # no fallback manager, otherwise: pbx
    await decided("fallback_pbx", 1)
    await sim.faults(endpoints={"transferCall": {"status": 500, "count": 2}})
    await over(await call(IVANOV_CLIENT), await call(PETROVA_CLIENT))
    await decided("error", 2)
    # MTT slower than the budget; while that decision is in flight an unknown caller is shed
    # (max_inflight 2: the last slot is kept for listed clients).
    await sim.faults(endpoints={"transferCall": {"latency_ms": 1800, "count": 1}})
    await over(await call(IVANOV_CLIENT), await call(UNKNOWN_CALLER))
    await decided("shed", 1)
    await decided("missed_window", 1)

    version = await replica.rules_version()
    replace_file(rules_path, WAIT)
    await eventually(lambda: _newer(replica, version), "the edited rules are loaded")
    await over(await call(UNKNOWN_CALLER))
    await decided("waited", 1)
    replace_file(rules_path, INVALID)
    await until("mtt_router_rules_reloads_total", 1, result="error")

    async with replica.http.post(replica.public_url + "/mtt/events", data=b"{not json") as resp:
        assert resp.status == 400
    await until("mtt_router_rejected_total", 1, reason="bad_request")
    # Who answered the decided calls is counted once they end (the hit rate panels).
    await until("mtt_router_answered_total", 1, by="personal")

    assert redis.proc is not None
    os.kill(redis.proc.pid, signal.SIGSTOP)
    try:
        await call(IVANOV_CLIENT)  # its claim falls back to a local one
        await decided("transferred", 3)
        await until("mtt_router_storage_errors_total", 1, op="claim")
        down = await eventually(
            lambda: _alert_state(prometheus, "MttRouterStorageDown"), "StorageDown pending"
        )
    finally:
        os.kill(redis.proc.pid, signal.SIGCONT)
    await until("mtt_router_storage_up", 1)
    return down


async def _newer(replica: Replica, version: int | None) -> bool:
    now = await replica.rules_version()
    return now is not None and version is not None and now > version


async def _alert_state(prometheus: Prometheus, name: str) -> str | None:
    alerts = await asyncio.to_thread(prometheus.alerts)
    return alerts.get(name)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def watched(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Watched]:
    """Start the rig, drive the scenario, wait until Prometheus scraped its end."""
    tmp = tmp_path_factory.mktemp("monitoring")
    redis = RedisServer(port=free_port(), dir=tmp)
    await asyncio.to_thread(redis.start)
    prometheus: Prometheus | None = None
    daemon: Replica | None = None
    sim: SimProcess | None = None
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as http:
        try:
            public_port, admin_port = free_port(), free_port()
            # No balancer in front: MTT posts straight to the one daemon.
            direct = Balancer(http)
            direct.url = f"http://127.0.0.1:{public_port}"
            sim = await _start_sim(tmp, webhook=direct.url + "/mtt/events", http=http, extra=[])
            cluster = Cluster(redis, sim, direct, http, tmp)
            config = cluster.config(
                "A",
                public_port=public_port,
                admin_port=admin_port,
                rules_source="file",
                admin_token=ADMIN_TOKEN,
            )
            config["server"]["max_inflight"] = 2
            config["routing"] |= {"mode": "live", "live_numbers": [NUMBER]}
            cluster.rules_path.write_text(NO_FALLBACK, encoding="utf-8")
            config_path = tmp / "daemon.yaml"
            config_path.write_text(json.dumps(config), encoding="utf-8")
            await cluster.store_tokens()
            proc = spawn("daemon", ["run", "--config", str(config_path)], tmp / "daemon.log",
                         stdout=subprocess.DEVNULL)  # fmt: skip
            daemon = Replica("A", proc, config_path, direct.url, f"http://127.0.0.1:{admin_port}",
                             http, admin_token=ADMIN_TOKEN)  # fmt: skip
            await cluster.wait_up(daemon)

            token_file = tmp / "admin-token"
            token_file.write_text(ADMIN_TOKEN + "\n", encoding="utf-8")
            target = f"127.0.0.1:{admin_port}"
            prometheus = await asyncio.to_thread(
                Prometheus.start, tmp / "prometheus", scrape_config(target, token_file)
            )
            up = f'up{{job="{JOB}"}}'
            await eventually(lambda: _equals(prometheus, up, 1.0), "the first scrape")

            try:
                down = await drive(daemon, sim, cluster.rules_path, redis, prometheus)
            except AssertionError as exc:
                raise AssertionError(f"{exc}\n-- daemon:\n{daemon.proc.log_tail()}") from None

            ended = time.time()
            async with http.get(daemon.admin_url + "/metrics", headers=daemon.auth) as resp:
                text = await resp.text()
            # Two scrapes that began after the end: every series has two samples since.
            scraped = f"timestamp({up} == 1) >= bool {ended + 1.0:.3f}"
            await eventually(lambda: _equals(prometheus, scraped, 1.0), "two scrapes after the end")
            yield Watched(prometheus, target, text, down)
        finally:
            if prometheus is not None:
                await asyncio.to_thread(prometheus.stop)
            code = await daemon.proc.stop() if daemon is not None else 0
            if sim is not None:
                await sim.proc.stop()
            await asyncio.to_thread(redis.stop)
    assert daemon is not None
    assert code == 0, daemon.proc.log_tail()


async def _equals(prometheus: Prometheus, expr: str, value: float) -> bool:
    return await asyncio.to_thread(prometheus.value, expr) == value


# -- the tests ---------------------------------------------------------------------------------


def test_the_scenario_gave_every_outcome(watched: Watched) -> None:
    """Prometheus holds every decision outcome above 0, and the dashboard's outcome panel shows
    each of them at a rate above 0."""
    result = watched.prometheus.query("mtt_router_decisions_total > 0")
    assert sorted(r["metric"]["outcome"] for r in result) == sorted(OUTCOMES)
    [(name, expr)] = [(n, e) for n, e in dashboard_targets() if n.startswith("Parked calls by")]
    shown = watched.prometheus.query(fill(expr, [watched.target]))
    assert sorted(r["metric"]["outcome"] for r in shown if float(r["value"][1]) > 0) == sorted(
        OUTCOMES
    ), name


def test_the_bearer_token_file_is_what_lets_prometheus_in(watched: Watched) -> None:
    """The shipped job (authorization from a credentials file) scrapes; the same job without
    it is refused with 401."""
    [with_token] = watched.prometheus.targets(JOB)
    assert (with_token["health"], with_token["lastError"]) == ("up", "")
    [without] = watched.prometheus.targets(NO_TOKEN_JOB)
    assert without["health"] == "down"
    assert "401" in without["lastError"]


def test_live_metrics_pass_promtool_check_metrics(watched: Watched) -> None:
    """`promtool check metrics` on the /metrics of a daemon that routed calls: no problem."""
    checked = promtool("check", "metrics", stdin=watched.metrics_text)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert (checked.stdout + checked.stderr).strip() == ""


def test_every_metric_the_kit_names_is_exposed(watched: Watched) -> None:
    """Each ``mtt_router_*`` name in the rules file and the dashboard (expressions, annotations,
    descriptions) is a metric or a sample of the daemon's /metrics."""
    families = list(text_string_to_metric_families(watched.metrics_text))
    exposed = {f.name for f in families} | {s.name for f in families for s in f.samples}
    used = referenced_metrics(RULES_PATH.read_text(encoding="utf-8"))
    used |= referenced_metrics(DASHBOARD.read_text(encoding="utf-8"))
    assert len(used) > 15
    assert sorted(used - exposed) == []


def test_every_dashboard_panel_returns_data(watched: Watched) -> None:
    """The replica variable lists the daemon; every panel target, with it chosen, evaluates
    without error to at least one sample, and at least one of them is a number (not NaN)."""
    instance = variable("instance")
    assert variable_values(watched.prometheus, instance["definition"]) == [watched.target]
    failed: dict[str, str] = {}
    for name, expr in dashboard_targets():
        query = fill(expr, [watched.target])
        try:
            result = watched.prometheus.query(query)
        except PrometheusError as exc:
            failed[name] = str(exc)
            continue
        values = [float(r["value"][1]) for r in result]
        if not values:
            failed[name] = f"no data: {query}"
        elif all(v != v for v in values):
            failed[name] = f"only NaN: {query}"
    assert failed == {}
    # The variable's "All" value matches too.
    assert watched.prometheus.query(fill(dashboard_targets()[0][1], [], raw=instance["allValue"]))


def test_every_rule_evaluates_on_live_data(watched: Watched) -> None:
    """Prometheus loaded every shipped alert and evaluates each without an error."""
    groups = watched.prometheus.api("rules", type="alert")["groups"]
    health = {r["name"]: (r["health"], r.get("lastError", "")) for g in groups for r in g["rules"]}
    assert health == {rule["alert"]: ("ok", "") for rule in alert_rules()}


def test_the_scenario_raises_its_alerts_and_no_others(watched: Watched) -> None:
    """Shed calls, the refused edit, the duplicate's second trying and three failed decisions
    raise their alerts; MttRouterStorageDown went pending while Redis was stopped and is quiet
    again, with everything else a healthy daemon must not raise."""
    assert watched.storage_down_alert == "pending"

    def settled() -> dict[str, str] | None:
        alerts = watched.prometheus.alerts()
        return alerts if alerts.keys() >= RAISED and not QUIET & alerts.keys() else None

    try:
        eventually_sync(settled, "the alerts of the scenario", interval_s=0.2)
    except AssertionError:
        alerts = watched.prometheus.alerts()
        assert (sorted(RAISED - alerts.keys()), sorted(QUIET & alerts.keys())) == ([], [])
