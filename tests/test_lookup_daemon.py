"""The CRM lookup end to end: a running daemon (rules version 2 with `lookup`), the MTT simulator
and a CRM over real HTTP. Each call is judged at the simulator (which workplace got it), the CRM
(which requests it got) and the daemon (its decision line and lookup metrics)."""

from __future__ import annotations

from collections.abc import MutableMapping, Sequence
from typing import Any

import pytest
from structlog.testing import capture_logs

from router.lookup import MAX_INFLIGHT
from router.simulator import SimConfig
from tests.fixtures.crm import CrmStub, Reply, found
from tests.fixtures.daemon import (
    IVANOV_CLIENT,
    IVANOV_WP,
    KUZNETSOVA_WP,
    NUMBER,
    PETROVA_WP,
    PREFIX_CALLER,
    SIDOROV_WP,
    UNKNOWN_CALLER,
    RunningDaemon,
    StartDaemon,
    daemon_sim_config,
    finished,
    replace_file,
    routed_to,
)
from tests.polling import eventually

SECRET = "crm-token-e2e"
UNKNOWN_N = "79990001122"
PREFIX_N = "74951234567"
TIMEOUT_MS = 400
Line = MutableMapping[str, Any]


def rules(crm: CrmStub, *, cache_s: float = 300, timeout_ms: int = TIMEOUT_MS) -> str:
    """Version 2: clients, then the CRM, then prefixes; fallback sidorov."""
    return f"""\
version: 2
timezone: Europe/Moscow
managers:
  ivanov: {{workplace: "{IVANOV_WP}"}}
  petrova: {{workplace: "{PETROVA_WP}"}}
  sidorov: {{workplace: "{SIDOROV_WP}"}}
  kuznetsova: {{workplace: "{KUZNETSOVA_WP}"}}
clients:
  "+7 921 946-27-61": ivanov
prefixes:
  "+7495": petrova
lookup:
  url: "{crm.lookup_url}"
  headers: {{Authorization: "Bearer ${{CRM_TOKEN}}"}}
  timeout_ms: {timeout_ms}
  cache_s: {cache_s}
order: [clients, lookup, prefixes]
fallback:
  managers: [sidorov]
  otherwise: pbx
"""


@pytest.fixture
def sim_config() -> SimConfig:
    """The simulator for daemon tests (1 s parking window)."""
    return daemon_sim_config()


@pytest.fixture
async def daemon(
    start_daemon: StartDaemon, crm: CrmStub, monkeypatch: pytest.MonkeyPatch
) -> RunningDaemon:
    """A daemon asking :func:`crm` (700 ms decision budget)."""
    monkeypatch.setenv("CRM_TOKEN", SECRET)
    return await start_daemon(rules=rules(crm))


def lookups(daemon: RunningDaemon, result: str) -> float:
    """``mtt_router_lookup_total{result}``."""
    return daemon.sample("mtt_router_lookup_total", result=result)


async def decision_line(logs: Sequence[Line], caller: str) -> Line:
    """The daemon's ``decision`` line for ``caller`` (as the notification spelled it)."""

    def line() -> Line | None:
        return next((x for x in logs if x["event"] == "decision" and x["caller"] == caller), None)

    return await eventually(line, f"the decision line for {caller}")


async def test_the_crm_names_the_manager(daemon: RunningDaemon, crm: CrmStub) -> None:
    """A caller the rules do not list: the CRM's manager gets the call (matched: lookup)."""
    crm.replies[UNKNOWN_N] = found("kuznetsova")
    with capture_logs() as logs:
        call = await daemon.sim.place_call(UNKNOWN_CALLER, NUMBER)
        assert await finished(call) == "transferred"
        line = await decision_line(logs, UNKNOWN_CALLER)
    assert routed_to(call) == KUZNETSOVA_WP
    assert (line["matched"], line["manager"]) == ("lookup", "kuznetsova")
    assert f"caller {UNKNOWN_N} is client of kuznetsova (lookup)" in line["reasons"]
    (request,) = crm.requests
    assert request.query == {"caller": UNKNOWN_N, "line": NUMBER}
    assert request.authorization == f"Bearer {SECRET}"
    assert lookups(daemon, "found") == 1


async def test_a_workplace_answer_transfers_to_the_manager_there(
    daemon: RunningDaemon, crm: CrmStub
) -> None:
    """{"workplace": ...}: the rules' manager at that workplace."""
    crm.replies[UNKNOWN_N] = Reply(body={"workplace": KUZNETSOVA_WP})
    call = await daemon.sim.place_call(UNKNOWN_CALLER, NUMBER)
    assert await finished(call) == "transferred"
    assert routed_to(call) == KUZNETSOVA_WP


async def test_a_slow_crm_leaves_the_call_to_the_next_source_in_time(
    daemon: RunningDaemon, crm: CrmStub
) -> None:
    """The CRM answers after the call's window: the prefix's manager gets the call inside the
    window, and the reason names the timeout; with no prefix, the fallback manager."""
    crm.replies[PREFIX_N] = Reply(body={"manager": "kuznetsova"}, delay_s=30)
    crm.replies[UNKNOWN_N] = Reply(body={"manager": "kuznetsova"}, delay_s=30)
    with capture_logs() as logs:
        call = await daemon.sim.place_call(PREFIX_CALLER, NUMBER)
        assert await finished(call) == "transferred"
        other = await daemon.sim.place_call(UNKNOWN_CALLER, NUMBER)
        assert await finished(other) == "transferred"
        line = await decision_line(logs, PREFIX_CALLER)
    assert (routed_to(call), routed_to(other)) == (PETROVA_WP, SIDOROV_WP)
    assert (line["matched"], line["manager"]) == ("prefix", "petrova")
    assert f"lookup skipped: timeout after {TIMEOUT_MS} ms" in line["reasons"]
    assert lookups(daemon, "timeout") == 2
    assert crm.asked(PREFIX_N) == 1


async def test_the_decision_budget_bounds_a_longer_timeout_ms(
    start_daemon: StartDaemon, crm: CrmStub, monkeypatch: pytest.MonkeyPatch
) -> None:
    """timeout_ms beyond the decision budget: the lookup gets what is left of the budget less
    the transfer's margin, so a silent CRM still leaves the call to the prefix in its window."""
    monkeypatch.setenv("CRM_TOKEN", SECRET)
    daemon = await start_daemon(rules=rules(crm, timeout_ms=3000))
    crm.replies[PREFIX_N] = Reply(body={"manager": "kuznetsova"}, delay_s=30)
    with capture_logs() as logs:
        call = await daemon.sim.place_call(PREFIX_CALLER, NUMBER)
        assert await finished(call) == "transferred"
        line = await decision_line(logs, PREFIX_CALLER)
    assert routed_to(call) == PETROVA_WP
    (reason,) = [r for r in line["reasons"] if r.startswith("lookup skipped: timeout after ")]
    assert int(reason.split()[-2]) <= 700 - 200
    assert line["outcome"] == "transferred"


async def test_a_failing_crm_is_skipped(daemon: RunningDaemon, crm: CrmStub) -> None:
    """500, not JSON, a manager the rules do not know: each call goes to the next source (the
    prefix's manager, else the fallback), counted as error; a failure is not cached."""
    crm.replies[PREFIX_N] = Reply(status=500)
    crm.replies[UNKNOWN_N] = Reply(raw=b"not json")
    crm.replies["79990001123"] = found("nobody")
    calls = (
        (PREFIX_CALLER, PETROVA_WP),
        (UNKNOWN_CALLER, SIDOROV_WP),
        ("+7 999 000-11-23", SIDOROV_WP),
        (UNKNOWN_CALLER, SIDOROV_WP),
    )
    for caller, workplace in calls:
        call = await daemon.sim.place_call(caller, NUMBER)
        assert await finished(call) == "transferred"
        assert routed_to(call) == workplace
    assert lookups(daemon, "error") == 4
    assert crm.asked(UNKNOWN_N) == 2


async def test_a_second_call_within_cache_s_asks_the_crm_no_more(
    daemon: RunningDaemon, crm: CrmStub
) -> None:
    """The same caller twice: one request at the CRM, the second decision from the cache."""
    crm.replies[UNKNOWN_N] = found("kuznetsova")
    for _ in range(2):
        call = await daemon.sim.place_call(UNKNOWN_CALLER, NUMBER)
        assert await finished(call) == "transferred"
        assert routed_to(call) == KUZNETSOVA_WP
    assert crm.asked(UNKNOWN_N) == 1
    assert (lookups(daemon, "found"), lookups(daemon, "cached")) == (1, 1)
    bounds = (await daemon.status())["bounds"]
    assert bounds["lookup_cache"]["size"] == 1


async def test_the_crm_is_not_asked_when_clients_names_the_caller(
    daemon: RunningDaemon, crm: CrmStub
) -> None:
    """clients comes first in order and names the caller's manager: no lookup at all."""
    crm.default = found("kuznetsova")
    call = await daemon.sim.place_call(IVANOV_CLIENT, NUMBER)
    assert await finished(call) == "transferred"
    assert routed_to(call) == IVANOV_WP
    assert crm.requests == []
    assert sum(lookups(daemon, r) for r in ("found", "unknown", "timeout", "error", "cached")) == 0


async def test_lookups_in_flight_are_capped(
    start_daemon: StartDaemon, crm: CrmStub, monkeypatch: pytest.MonkeyPatch
) -> None:
    """33 unknown callers at once and a CRM that holds every request: 32 lookups wait for it
    (and time out), the 33rd is skipped at once; every call is still released in its window."""
    monkeypatch.setenv("CRM_TOKEN", SECRET)
    # 600 ms of 900 for the lookups: time for all 33 notifications to arrive while 32 wait.
    no_fallback = rules(crm, timeout_ms=600).replace("managers: [sidorov]", "managers: []")
    daemon = await start_daemon(rules=no_fallback, budget_ms=900)
    crm.default = Reply(body={"manager": "kuznetsova"}, hold=True)
    callers = [f"+7 999 100-00-{i:02d}" for i in range(MAX_INFLIGHT + 1)]
    with capture_logs() as logs:
        calls = [daemon.sim.start_call(caller, NUMBER) for caller in callers]
        outcomes = [await finished(call) for call in calls]
        await daemon.wait_decisions(len(callers))
    assert outcomes == ["terminated"] * len(callers)
    assert crm.most_waiting == MAX_INFLIGHT
    assert len(crm.requests) == MAX_INFLIGHT
    skipped = [
        x
        for x in logs
        if x["event"] == "decision"
        and f"lookup skipped: too many lookups in flight ({MAX_INFLIGHT})" in x["reasons"]
    ]
    assert len(skipped) == 1
    assert (lookups(daemon, "timeout"), lookups(daemon, "error")) == (MAX_INFLIGHT, 1)


async def test_a_reload_changes_the_lookup(
    daemon: RunningDaemon, crm: CrmStub, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The rules are read per call: a reload without `lookup` stops the requests."""
    crm.default = found("kuznetsova")
    text = rules(crm)
    without = text[: text.index("lookup:")] + text[text.index("order:") :]
    replace_file(daemon.rules_path, without)

    async def reloaded() -> bool:
        return bool((await daemon.status())["rules"]["version"] == 2)

    await eventually(reloaded, "the rules without lookup are loaded")
    call = await daemon.sim.place_call(UNKNOWN_CALLER, NUMBER)
    assert await finished(call) == "transferred"
    assert routed_to(call) == SIDOROV_WP
    assert crm.requests == []
