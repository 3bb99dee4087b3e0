"""The admin listener: /healthz, /readyz, /status, /oauth/start and /metrics."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest
from prometheus_client.parser import text_string_to_metric_families

from router.simulator import SimConfig
from router.simulator.config import DOC_NUMBERS, DOC_WORKPLACES
from tests.fixtures.daemon import (
    INVALID_RULES,
    IVANOV_CLIENT,
    NUMBER,
    RULES,
    RunningDaemon,
    StartDaemon,
    daemon_sim_config,
    outcome_of,
    replace_file,
)
from tests.polling import eventually

CONTRACT_METRICS = {
    "mtt_router_notifications_total": "counter",
    "mtt_router_decisions_total": "counter",
    "mtt_router_decision_seconds": "histogram",
    "mtt_router_api_requests_total": "counter",
    "mtt_router_api_request_seconds": "histogram",
    "mtt_router_token_refreshes_total": "counter",
    "mtt_router_token_expiry_timestamp_seconds": "gauge",
    "mtt_router_rules_reloads_total": "counter",
    "mtt_router_rules_entries": "gauge",
    "mtt_router_rules_version": "gauge",
    "mtt_router_needs_login": "gauge",
    "mtt_router_storage_up": "gauge",
    "mtt_router_storage_errors_total": "counter",
    "mtt_router_directory_entries": "gauge",
    "mtt_router_rejected_total": "counter",
    "mtt_router_inflight_decisions": "gauge",
    "mtt_router_answered_total": "counter",
    "mtt_router_callmodel_surprises_total": "counter",
}
"""The contract's metric names (README.md, "Watch it"), as exposed, and their types."""


@pytest.fixture
def sim_config() -> SimConfig:
    """The simulator for daemon tests (1 s parking window)."""
    return daemon_sim_config()


async def test_healthz(start_daemon: StartDaemon) -> None:
    """/healthz answers 200 even when the daemon is not ready."""
    daemon = await start_daemon(authorised=False, wait_ready=False)
    assert await daemon.admin("/healthz") == (200, {"status": "ok"})


async def test_readyz_without_token_is_503_naming_it(start_daemon: StartDaemon) -> None:
    """No token: 503 with JSON saying the token is what is missing (rules and storage fine)."""
    daemon = await start_daemon(authorised=False, wait_ready=False)
    code, body = await daemon.admin("/readyz")
    assert code == 503
    assert body["ready"] is False
    assert body["checks"]["token"].startswith("needs login")
    assert "/oauth/start" in body["checks"]["token"]
    assert (body["checks"]["rules"], body["checks"]["storage"]) == ("ok", "ok")


async def test_readyz_with_invalid_rules_at_start_is_503_naming_the_problem(
    start_daemon: StartDaemon,
) -> None:
    """Rules invalid at start: 503 naming the rules and the offending line, until fixed."""
    daemon = await start_daemon(rules=INVALID_RULES, wait_ready=False)
    code, body = await daemon.admin("/readyz")
    assert code == 503
    assert body["checks"]["token"] == "ok"
    rules = body["checks"]["rules"]
    assert rules.startswith("no rules (")
    assert f"{daemon.rules_path}:" in rules
    assert "nobody" in rules
    status = await daemon.status()
    assert status["rules"]["loaded"] is False
    assert status["rules"]["last_error"] is not None
    assert daemon.sample("mtt_router_rules_reloads_total", result="error") == 1
    # Fixed on disk: the watcher loads it and the daemon becomes ready.
    replace_file(daemon.rules_path, RULES)

    async def ready() -> bool:
        return (await daemon.admin("/readyz"))[0] == 200

    await eventually(ready, "ready once the rules file is fixed")
    assert (await daemon.status())["rules"]["version"] == 1


async def test_readyz_with_missing_rules_file_is_503(start_daemon: StartDaemon) -> None:
    """No rules file at all: 503, the rules check says it cannot be read."""
    daemon = await start_daemon(rules=None, wait_ready=False)
    code, body = await daemon.admin("/readyz")
    assert code == 503
    assert "cannot read" in body["checks"]["rules"]


async def test_readyz_is_200_when_ready(daemon: RunningDaemon) -> None:
    """Token, rules and storage all fine: 200 and every check ok."""
    assert await daemon.admin("/readyz") == (
        200,
        {"ready": True, "checks": {"token": "ok", "rules": "ok", "storage": "ok"}},
    )


async def test_status_content(start_daemon: StartDaemon) -> None:
    """/status: token expiry (never a token), rules version and counts, numbers, workplaces."""
    daemon = await start_daemon(park="all")
    await eventually(
        lambda: len(daemon.sim.requests_to("setParkingNumbers")) == 1, "parking switched on"
    )
    call = await daemon.sim.place_call(IVANOV_CLIENT, NUMBER, talk_ms=5000)
    assert await outcome_of(call) == "transferred"
    await eventually(lambda: "connected" in call.states, "the manager answered")

    async def busy_shown() -> bool:
        return bool((await daemon.status())["engine"]["busy"])

    await eventually(busy_shown, "the busy workplace shows in /status")
    async with daemon.http.get(daemon.admin_url + "/status") as resp:
        text = await resp.text()
    status = await daemon.status()

    tokens = status["tokens"]
    assert (tokens["authorized"], tokens["needs_login"], tokens["version"]) == (True, False, 1)
    assert tokens["access_expires_at"].endswith("Z")
    assert tokens["refresh_expires_at"].endswith("Z")
    secrets = [*daemon.sim.tokens.access, *daemon.sim.tokens.refresh]
    assert secrets
    for secret in secrets:
        assert secret not in text  # expiry times only, never a token

    rules = status["rules"]
    assert (rules["loaded"], rules["version"], rules["last_error"]) == (True, 1, None)
    assert rules["source"] == str(daemon.rules_path)
    assert rules["counts"] == {"managers": 3, "clients": 2, "prefixes": 1, "fallback": 1}

    directory = status["directory"]
    assert directory["numbers"] == sorted(DOC_NUMBERS)
    assert directory["parked_numbers"] == sorted(DOC_NUMBERS)
    assert sorted(w["workplace"] for w in directory["workplaces"]) == sorted(DOC_WORKPLACES)
    assert {"workplace": "883140777716581", "name": "Иван Иванов"} in directory["workplaces"]

    assert status["engine"]["busy"] == ["883140777716581"]
    assert status["storage"] == "memory"
    assert status["started_at"].endswith("Z")


async def test_status_before_login(start_daemon: StartDaemon) -> None:
    """Before any login /status says so and the directory is still unknown."""
    daemon = await start_daemon(authorised=False, wait_ready=False)
    status = await daemon.status()
    assert status["tokens"] == {"authorized": False, "needs_login": True, "version": None}
    assert status["directory"]["numbers"] is None
    assert status["directory"]["workplaces"] is None


async def test_oauth_start_redirects_to_mtt_authorize(start_daemon: StartDaemon) -> None:
    """302 to MTT's authorize URL with our client, redirect URI, scope and a fresh state."""
    daemon = await start_daemon(authorised=False, wait_ready=False)
    locations = []
    for _ in range(2):
        async with daemon.http.get(
            daemon.admin_url + "/oauth/start", allow_redirects=False
        ) as resp:
            assert resp.status == 302
            locations.append(resp.headers["Location"])
    parts = urlsplit(locations[0])
    assert f"{parts.scheme}://{parts.netloc}{parts.path}" == f"{daemon.sim.url}/oauth/authorize"
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    assert query.pop("state") != parse_qs(urlsplit(locations[1]).query)["state"][0]
    assert query == {
        "response_type": "code",
        "client_id": daemon.config.mtt.client_id,
        "redirect_uri": daemon.config.mtt.redirect_uri,
        "scope": "https://mtt.ru/auth.tokens.readwrite",
    }


async def test_oauth_flow_makes_the_daemon_ready(start_daemon: StartDaemon) -> None:
    """/oauth/start -> MTT -> callback: tokens stored, /readyz 200, directory loaded."""
    daemon = await start_daemon(authorised=False, wait_ready=False)
    # A browser follows both redirects: to MTT, then (no login page here) back to the callback.
    async with daemon.http.get(daemon.admin_url + "/oauth/start") as resp:
        assert (resp.status, str(resp.url).startswith(daemon.callback_url)) == (200, True)
        assert "Authorised" in await resp.text()
    assert daemon.sim.tokens.grants["authorization_code"] == 1
    # Ready once the external numbers are fetched with the new token (not before: which calls
    # are parked would be a guess).
    await daemon.wait_directory()
    assert await daemon.admin("/readyz") == (
        200,
        {"ready": True, "checks": {"token": "ok", "rules": "ok", "storage": "ok"}},
    )
    call = await daemon.sim.place_call(IVANOV_CLIENT, NUMBER)
    assert await outcome_of(call) == "transferred"


async def test_metrics_has_every_spec_metric(daemon: RunningDaemon) -> None:
    """/metrics (Prometheus text) names every metric of the contract, with values after a call."""
    call = await daemon.sim.place_call(IVANOV_CLIENT, NUMBER)
    assert await outcome_of(call) == "transferred"
    await daemon.wait_decisions(1)
    async with daemon.http.get(daemon.admin_url + "/metrics") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = await resp.text()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    exposed = {
        (f"{name}_total" if f.type == "counter" else name): f.type for name, f in families.items()
    }
    assert {name: exposed.get(name) for name in CONTRACT_METRICS} == CONTRACT_METRICS

    def value(sample_name: str, **labels: str) -> float | None:
        family = families[sample_name.removesuffix("_total").removesuffix("_count")]
        for sample in family.samples:
            if sample.name == sample_name and sample.labels == labels:
                return sample.value
        return None

    assert value("mtt_router_notifications_total", event="callNotifications", state="trying") == 1
    assert value("mtt_router_decisions_total", outcome="transferred") == 1
    assert value("mtt_router_decision_seconds_count") == 1
    assert value("mtt_router_api_requests_total", method="transferCall", code="200") == 1
    assert value("mtt_router_api_request_seconds_count", method="transferCall") == 1
    assert value("mtt_router_rules_reloads_total", result="ok") == 1
    assert value("mtt_router_rules_entries", kind="clients") == 2
    access_expiry = value("mtt_router_token_expiry_timestamp_seconds", token="access")
    assert access_expiry is not None
    assert access_expiry > 0
