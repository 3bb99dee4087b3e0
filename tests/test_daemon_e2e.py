"""End to end with real processes: ``mtt-router simulate`` and ``mtt-router run``.

The operator's path: start both, log in through ``/oauth/start``, let calls arrive (placed through
the simulator's control API), edit the rules, send SIGHUP, stop with SIGTERM while a call is in
flight. Every call is checked at the simulator: which workplace got it, or why none did.
Select these with ``-m e2e`` (or leave them out with ``-m "not e2e"``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from router.mtt.tokens import TokenSet
from router.state.memory import FileTokenStore
from tests.fixtures.daemon import (
    INVALID_RULES,
    IVANOV_CLIENT,
    IVANOV_WP,
    NUMBER,
    PETROVA_WP,
    PREFIX_CALLER,
    RULES,
    SIDOROV_WP,
    UNKNOWN_CALLER,
    replace_file,
)
from tests.fixtures.net import free_port
from tests.polling import eventually

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[1]
START_S = 20.0
"""Bound on a process starting (interpreter and imports on a loaded machine)."""
PARKING_WINDOW_S = 2.0
BUDGET_MS = 1500
NO_FALLBACK = RULES.replace("  managers: [sidorov]\n", "  managers: []\n")
CONTRACT_METRICS = (
    "mtt_router_notifications_total",
    "mtt_router_decisions_total",
    "mtt_router_decision_seconds",
    "mtt_router_api_requests_total",
    "mtt_router_api_request_seconds",
    "mtt_router_token_refreshes_total",
    "mtt_router_token_expiry_timestamp_seconds",
    "mtt_router_rules_reloads_total",
    "mtt_router_rules_entries",
)

Json = dict[str, Any]


@dataclass
class Process:
    """A child process whose stderr (JSON log lines) is collected as it comes."""

    proc: asyncio.subprocess.Process
    logs: list[Json] = field(default_factory=list)
    text: list[str] = field(default_factory=list)
    _reader: asyncio.Task[None] | None = None

    def start_reading(self) -> None:
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc.stderr is not None
        async for raw in self.proc.stderr:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            self.text.append(line)
            with contextlib.suppress(ValueError):
                entry = json.loads(line)
                if isinstance(entry, dict):
                    self.logs.append(entry)

    def events(self, name: str, **fields: Any) -> list[Json]:
        """Log lines with ``event == name`` and the given field values."""
        return [
            e
            for e in self.logs
            if e.get("event") == name and all(e.get(k) == v for k, v in fields.items())
        ]

    async def stop(self, sig: signal.Signals = signal.SIGTERM, timeout_s: float = 15.0) -> int:
        """Send ``sig`` and wait for the exit code (killing it if it does not exit in time)."""
        if self.proc.returncode is None:
            self.proc.send_signal(sig)
            try:
                await asyncio.wait_for(self.proc.wait(), timeout_s)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
                raise
        if self._reader is not None:
            await asyncio.wait_for(self._reader, 5)
        assert self.proc.returncode is not None
        return self.proc.returncode

    def tail(self) -> str:
        """The last log lines, for assertion messages."""
        return "\n".join(self.text[-30:])


async def spawn(*args: str, stdout: bool = False) -> Process:
    """``python -m router ARGS`` from the repository root."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "router",
        *args,
        cwd=ROOT,
        env={**os.environ, "PYTHONIOENCODING": "utf-8", "MTT_CLIENT_SECRET": SECRET},
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE if stdout else asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    child = Process(proc)
    child.start_reading()
    return child


SECRET = "e2e-client-secret"


@dataclass
class Setup:
    """The two processes and what the test needs to reach them."""

    sim: Process
    sim_url: str
    daemon: Process
    public_url: str
    admin_url: str
    rules_path: Path
    tokens_path: Path
    http: aiohttp.ClientSession
    config_path: Path

    async def get(self, url: str) -> tuple[int, Any]:
        async with self.http.get(url) as resp:
            body = await resp.text()
            with contextlib.suppress(ValueError):
                return resp.status, json.loads(body)
            return resp.status, body

    async def post(self, url: str, body: Json) -> Json:
        async with self.http.post(url, json=body) as resp:
            assert resp.status in (200, 201), await resp.text()
            result: Json = await resp.json()
            return result

    async def status(self) -> Json:
        code, body = await self.get(self.admin_url + "/status")
        assert code == 200, body
        assert isinstance(body, dict)
        return body

    async def call(
        self, caller: str, *, forwarders: list[str] | None = None, callee: str = NUMBER
    ) -> Json:
        """Place a call at the simulator; return its record once the call is over."""
        body: Json = {"caller": caller, "callee": callee, "wait": True}
        if forwarders:
            body["forwarders"] = forwarders
        call_id = (await self.post(self.sim_url + "/_sim/calls", body))["call"]["id"]
        record: Json = {}

        async def resolved() -> bool:
            nonlocal record
            code, answer = await self.get(f"{self.sim_url}/_sim/calls/{call_id}")
            assert code == 200, answer
            record = answer["call"]
            return bool(record["phase"] == "done")

        # Until the call is over, so that its workplace is free for the next call of the script.
        await eventually(resolved, f"call {call_id} over at the simulator")
        return record

    async def metrics(self) -> dict[str, Any]:
        async with self.http.get(self.admin_url + "/metrics") as resp:
            assert resp.status == 200
            return {f.name: f for f in text_string_to_metric_families(await resp.text())}


def sample(families: dict[str, Any], name: str, **labels: str) -> float:
    """One sample's value from parsed /metrics (0 when absent)."""
    family = families[name.removesuffix("_total").removesuffix("_count")]
    for s in family.samples:
        if s.name == name and s.labels == labels:
            return float(s.value)
    return 0.0


Start = Callable[..., Awaitable[Setup]]


@pytest.fixture
async def start(tmp_path: Path) -> AsyncIterator[Start]:
    """Start the simulator and the daemon as processes; both are stopped after the test."""
    children: list[Process] = []

    async def start_both(*, authorised: bool, routing: str = "") -> Setup:
        public_port = free_port()
        events_url = f"http://127.0.0.1:{public_port}/mtt/events"
        sim = await spawn(
            "simulate", "--listen", "127.0.0.1:0", "--webhook", events_url,
            "--parking-window-s", str(PARKING_WINDOW_S), "--answer-after-ms", "20",
            "--talk-ms", "100", "--ring-timeout-ms", "300", "--client-secret", SECRET,
            "--seed", "1",
            stdout=True,
        )  # fmt: skip
        children.append(sim)
        assert sim.proc.stdout is not None
        line = await asyncio.wait_for(sim.proc.stdout.readline(), START_S)
        assert line, f"simulate exited: {sim.tail()}"
        sim_url = json.loads(line)["url"]

        rules_path = tmp_path / "rules.yaml"
        replace_file(rules_path, RULES)
        tokens_path = tmp_path / "tokens.json"
        admin_port = free_port()
        config = tmp_path / "config.yaml"
        config.write_text(
            f"""\
mtt:
  client_id: "ccb350cc-6218-40b0-b134-3d290f00b9e7"
  client_secret: "${{MTT_CLIENT_SECRET}}"
  redirect_uri: "http://127.0.0.1:{public_port}/mtt"
  oauth_url: "{sim_url}"
  api_url: "{sim_url}"
server:
  listen: "127.0.0.1:{public_port}"
  admin_listen: "127.0.0.1:{admin_port}"
storage: memory
tokens_file: "{tokens_path}"
rules:
  source: file
  path: "{rules_path}"
routing:
  decision_budget_ms: {BUDGET_MS}
{routing}log:
  format: json
  level: info
""",
            encoding="utf-8",
        )
        http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        setup = Setup(
            sim=sim,
            sim_url=sim_url,
            daemon=sim,  # replaced below
            public_url=f"http://127.0.0.1:{public_port}",
            admin_url=f"http://127.0.0.1:{admin_port}",
            rules_path=rules_path,
            tokens_path=tokens_path,
            http=http,
            config_path=config,
        )
        sessions.append(http)
        setups.append(setup)
        if authorised:
            answer = await setup.post(sim_url + "/_sim/tokens", {})
            tokens = TokenSet.from_answer(answer, now=time.time(), version=1)
            await FileTokenStore(tokens_path).save(tokens, expected_version=None)
        daemon = await spawn("run", "--config", str(config))
        children.append(daemon)
        setup.daemon = daemon

        async def healthy() -> bool:
            if daemon.proc.returncode is not None:
                raise AssertionError(f"run exited {daemon.proc.returncode}: {daemon.tail()}")
            with contextlib.suppress(aiohttp.ClientError):
                return (await setup.get(setup.admin_url + "/healthz"))[0] == 200
            return False

        await eventually(healthy, "the daemon answers /healthz", timeout_s=START_S)
        await eventually(lambda: bool(daemon.events("listening")), "the 'listening' log line")
        assert daemon.events("listening")[0]["events_path"] == "/mtt/events"
        return setup

    sessions: list[aiohttp.ClientSession] = []
    setups: list[Setup] = []
    violations: list[Any] = []
    try:
        yield start_both
    finally:
        for setup in setups:  # the simulator's verdict on every command, while it still runs
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                violations += (await setup.get(setup.sim_url + "/_sim/violations"))[1]["violations"]
        for session in sessions:
            await session.close()
        for child in reversed(children):  # the daemon first, then the simulator
            with contextlib.suppress(ProcessLookupError, TimeoutError):
                await child.stop()
    # No command of the daemon may have acted on a live call (docs/CALL_MODEL.md, "Commands").
    assert violations == []


async def ready(setup: Setup) -> None:
    """Until /readyz is 200 and the directory is loaded."""

    async def check() -> bool:
        code, _ = await setup.get(setup.admin_url + "/readyz")
        status = await setup.status()
        return code == 200 and status["directory"]["workplaces"] is not None

    await eventually(check, "the daemon is ready")


async def test_login_then_scripted_calls(start: Start) -> None:
    """OAuth through /oauth/start, then a mix of calls, each routed (or not) as the rules say."""
    setup = await start(authorised=False)
    code, body = await setup.get(setup.admin_url + "/readyz")
    assert (code, body["checks"]["token"].startswith("needs login")) == (503, True)

    # The operator opens /oauth/start; MTT (no login page here) sends the browser back.
    async with setup.http.get(setup.admin_url + "/oauth/start") as resp:
        assert resp.status == 200
        assert str(resp.url).startswith(setup.public_url + "/mtt?code=")
        assert "Authorised" in await resp.text()
    assert setup.tokens_path.stat().st_mode & 0o777 == 0o600
    await ready(setup)

    script = [
        ("client of ivanov", IVANOV_CLIENT, IVANOV_WP),
        ("prefix +7495: petrova", PREFIX_CALLER, PETROVA_WP),
        ("unknown caller: fallback sidorov", UNKNOWN_CALLER, SIDOROV_WP),
    ]
    for what, caller, workplace in script:
        call = await setup.call(caller)
        command = call["command"]
        assert (what, call["outcome"], command["kind"], command["workplace"]) == (
            what,
            "transferred",
            "transfer",
            workplace,
        )
        assert (what, call["refused"], call["late"]) == (what, [], False)

    forwarded = await setup.call(UNKNOWN_CALLER, forwarders=[IVANOV_WP])
    assert (forwarded["outcome"], forwarded["command"], forwarded["refused"]) == (
        "forwarded",
        None,
        [],
    )

    await setup.post(setup.sim_url + "/_sim/faults", {"duplicate_trying": 1})
    duplicated = await setup.call(IVANOV_CLIENT)
    await setup.post(setup.sim_url + "/_sim/faults", {"clear": True})
    assert duplicated["states"].count("trying") == 2
    assert (duplicated["outcome"], duplicated["command"]["workplace"]) == (
        "transferred",
        IVANOV_WP,
    )
    assert duplicated["refused"] == []  # one command for the two copies

    async def counted() -> bool:
        families = await setup.metrics()
        return sample(families, "mtt_router_decisions_total", outcome="duplicate") == 1

    await eventually(counted, "the duplicate is counted")
    families = await setup.metrics()
    exposed = {f"{n}_total" if f.type == "counter" else n for n, f in families.items()}
    assert sorted(set(CONTRACT_METRICS) - exposed) == []
    decisions = {
        outcome: sample(families, "mtt_router_decisions_total", outcome=outcome)
        for outcome in ("transferred", "duplicate", "fallback_pbx", "error", "missed_window")
    }
    assert decisions == {
        "transferred": 4,
        "duplicate": 1,
        "fallback_pbx": 0,
        "error": 0,
        "missed_window": 0,
    }
    trying = sample(
        families, "mtt_router_notifications_total", event="callNotifications", state="trying"
    )
    assert trying == 6  # three plain calls, the forwarded leg, the duplicated call twice
    assert sample(families, "mtt_router_decision_seconds_count") == 4
    assert sample(families, "mtt_router_api_requests_total", method="transferCall", code="200") == 4
    assert sample(families, "mtt_router_rules_entries", kind="clients") == 2
    assert sample(families, "mtt_router_token_expiry_timestamp_seconds", token="access") > 0
    assert len(setup.daemon.events("decision")) == 5
    assert await setup.daemon.stop() == 0


async def test_rules_edits_and_sighup(start: Start) -> None:
    """SIGHUP reloads; an invalid edit keeps the last good rules; the watcher applies a fix."""
    setup = await start(authorised=True)
    await ready(setup)
    daemon = setup.daemon

    call = await setup.call(UNKNOWN_CALLER)
    assert call["command"]["workplace"] == SIDOROV_WP

    # No fallback managers any more: unknown callers go straight back to the PBX.
    replace_file(setup.rules_path, NO_FALLBACK)
    daemon.proc.send_signal(signal.SIGHUP)
    await eventually(lambda: bool(daemon.events("rules_reload", reason="SIGHUP")), "SIGHUP reload")
    await eventually(lambda: _no_fallback(setup), "the new rules are in use")
    call = await setup.call(UNKNOWN_CALLER)
    assert (call["outcome"], call["command"]["kind"]) == ("terminated", "terminate")
    good_version = (await setup.status())["rules"]["version"]

    # An invalid edit, then SIGHUP: rejected, the last good rules stay.
    replace_file(setup.rules_path, INVALID_RULES)
    daemon.proc.send_signal(signal.SIGHUP)
    await eventually(lambda: bool(daemon.events("rules_rejected")), "the invalid edit is rejected")
    status = await setup.status()
    assert status["rules"]["version"] == good_version
    assert "nobody" in status["rules"]["last_error"]
    assert daemon.events("rules_rejected")[0]["kept_version"] == good_version
    families = await setup.metrics()
    assert sample(families, "mtt_router_rules_reloads_total", result="error") >= 1
    assert (await setup.get(setup.admin_url + "/readyz"))[0] == 200
    call = await setup.call(IVANOV_CLIENT)
    assert call["command"]["workplace"] == IVANOV_WP
    call = await setup.call(UNKNOWN_CALLER)
    assert call["outcome"] == "terminated"

    # Fixed on disk, no signal: the watcher picks it up within its poll interval.
    replace_file(setup.rules_path, RULES)

    async def fixed() -> bool:
        rules = (await setup.status())["rules"]
        return bool(rules["last_error"] is None and rules["version"] > good_version)

    await eventually(fixed, "the watcher loads the fixed file")
    call = await setup.call(UNKNOWN_CALLER)
    assert call["command"]["workplace"] == SIDOROV_WP
    assert await daemon.stop() == 0


async def _no_fallback(setup: Setup) -> bool:
    return bool((await setup.status())["rules"]["counts"]["fallback"] == 0)


async def test_sigterm_with_a_call_in_flight(start: Start) -> None:
    """SIGTERM while MTT is slow on transferCall: the transfer completes, then exit code 0."""
    setup = await start(authorised=True)
    await ready(setup)
    slow = {"endpoints": {"transferCall": {"latency_ms": 1000}}}
    await setup.post(setup.sim_url + "/_sim/faults", slow)
    placed = await setup.post(
        setup.sim_url + "/_sim/calls", {"caller": IVANOV_CLIENT, "callee": NUMBER, "wait": True}
    )
    call_id = placed["call"]["id"]

    async def sent() -> bool:
        _, body = await setup.get(setup.sim_url + "/_sim/requests?endpoint=transferCall")
        return len(body["requests"]) == 1

    await eventually(sent, "transferCall reached MTT")
    code = await setup.daemon.stop(signal.SIGTERM)
    assert code == 0, setup.daemon.tail()
    stopping = setup.daemon.events("stopping")
    assert stopping, setup.daemon.tail()
    assert stopping[0]["inflight"] == 1
    assert setup.daemon.events("stopped")
    _, body = await setup.get(f"{setup.sim_url}/_sim/calls/{call_id}")
    call = body["call"]
    assert (call["outcome"], call["command"]["accepted"], call["command"]["workplace"]) == (
        "transferred",
        True,
        IVANOV_WP,
    )
    decision = setup.daemon.events("decision")
    assert [d["outcome"] for d in decision] == ["transferred"]


async def test_shadow_then_one_line_live_then_all_live_without_a_restart(start: Start) -> None:
    """Shadow releases every call at once and logs the would-be manager; live_numbers makes
    exactly those calls live; SIGHUP switches, and an invalid config edit keeps the running mode."""
    setup = await start(authorised=True, routing='  mode: "shadow"\n')
    await ready(setup)
    daemon = setup.daemon
    other_line = "78005560251"

    call = await setup.call(IVANOV_CLIENT)
    assert (call["outcome"], call["command"]["kind"]) == ("terminated", "terminate")
    assert call["decision_latency_s"] < PARKING_WINDOW_S  # released at once, not after the window
    line = daemon.events("decision")[-1]
    assert (line["outcome"], line["manager"], line["workplace"]) == ("shadow", "ivanov", IVANOV_WP)
    status = await setup.status()
    assert status["rollout"]["mode"] == "shadow"
    assert set(status["rollout"]["numbers"].values()) == {"shadow"}

    # One line live: only calls to NUMBER are transferred.
    text = setup.config_path.read_text(encoding="utf-8")
    one_line = text.replace('  mode: "shadow"\n', f'  mode: "live"\n  live_numbers: ["{NUMBER}"]\n')
    replace_file(setup.config_path, one_line)
    daemon.proc.send_signal(signal.SIGHUP)
    await eventually(lambda: bool(daemon.events("rollout_changed")), "the new rollout applies")
    call = await setup.call(IVANOV_CLIENT)
    assert (call["outcome"], call["command"]["workplace"]) == ("transferred", IVANOV_WP)
    call = await setup.call(IVANOV_CLIENT, callee=other_line)
    assert (call["outcome"], call["command"]["kind"]) == ("terminated", "terminate")
    status = await setup.status()
    assert status["rollout"]["numbers"] == {NUMBER: "live", other_line: "shadow"}

    # A broken config edit is refused and the running mode stays; then all lines live.
    replace_file(setup.config_path, one_line.replace('"live"', '"sideways"'))
    daemon.proc.send_signal(signal.SIGHUP)
    await eventually(lambda: bool(daemon.events("config_reload_rejected")), "the edit is refused")
    assert (await setup.status())["rollout"]["mode"] == "live"
    replace_file(setup.config_path, one_line.replace(f'  live_numbers: ["{NUMBER}"]\n', ""))
    daemon.proc.send_signal(signal.SIGHUP)
    await eventually(lambda: len(daemon.events("rollout_changed")) == 2, "all lines live")
    call = await setup.call(IVANOV_CLIENT, callee=other_line)
    assert (call["outcome"], call["command"]["workplace"]) == ("transferred", IVANOV_WP)

    families = await setup.metrics()
    assert sample(families, "mtt_router_decisions_total", outcome="shadow") == 2
    assert sample(families, "mtt_router_decisions_total", outcome="transferred") == 2
    # Shadow and live calls alike count who answered: the PBX's own routing is the baseline.
    answered = {
        by: sample(families, "mtt_router_answered_total", by=by)
        for by in ("personal", "fallback", "other", "nobody")
    }
    assert sum(answered.values()) == 4
    assert answered["personal"] >= 2  # the two live transfers to ivanov

    # SIGHUP also applies server.allow_from: this host is then refused.
    all_live = setup.config_path.read_text(encoding="utf-8")
    guarded = all_live.replace("server:\n", 'server:\n  allow_from: ["203.0.113.0/24"]\n', 1)
    replace_file(setup.config_path, guarded)
    daemon.proc.send_signal(signal.SIGHUP)
    await eventually(lambda: bool(daemon.events("allow_from_changed")), "allow_from applies")
    async with setup.http.post(setup.public_url + "/mtt/events", json={"event": "x"}) as resp:
        assert resp.status == 403
    assert await daemon.stop() == 0
