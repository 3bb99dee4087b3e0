"""Rules ``learn`` end to end: the daemon, the MTT simulator over real HTTP, the learned map in
memory storage (its file beside the tokens) or in Redis shared by two replica processes, and
`mtt-router clients learned|forget` as processes.

The rules give the second line (``OTHER_NUMBER``) its own fallback, kuznetsova: a call to that
line reaching sidorov shows the lesson at work, whatever else the decision line says.
"""

from __future__ import annotations

import asyncio
import json
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from router.simulator import SimConfig
from router.simulator.wire import call_notification, client_party, ended, pbx_party
from router.state.learned_file import learned_path
from tests.fixtures import replicas
from tests.fixtures.daemon import (
    IVANOV_WP,
    KUZNETSOVA_WP,
    NUMBER,
    OTHER_NUMBER,
    PETROVA_WP,
    SIDOROV_WP,
    RunningDaemon,
    StartDaemon,
    daemon_sim_config,
    finished,
    routed_to,
)
from tests.fixtures.replicas import Cluster
from tests.polling import eventually

ROOT = Path(__file__).resolve().parents[1]
CALLER = "+79990001122"
CALLER_N = "79990001122"
OTHER_CALLER = "+79990003344"
OTHER_CALLER_N = "79990003344"
TALK_MS = 700.0
"""Long enough to teach: ``learn.min_talk_s`` is 0.3 s."""


def rules() -> str:
    """Version 2 with ``learn``; the top-level fallback sidorov, OTHER_NUMBER's kuznetsova."""
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


@pytest.fixture
def sim_config() -> SimConfig:
    """The simulator for daemon tests (1 s parking window)."""
    return daemon_sim_config()


def decisions(logs: list[Any], caller: str) -> list[dict[str, Any]]:
    """The daemon's ``decision`` lines for ``caller`` (as the notification spelled it)."""
    return [x for x in logs if x["event"] == "decision" and x["caller"] == caller]


def lessons(logs: list[Any], caller: str) -> list[dict[str, Any]]:
    """The daemon's ``learned`` lines for the normalised ``caller``."""
    return [x for x in logs if x["event"] == "learned" and x["caller"] == caller]


async def teach(daemon: RunningDaemon, caller: str, callee: str) -> str | None:
    """A call from ``caller`` that is answered and lasts :data:`TALK_MS`; the workplace it was
    transferred to, once the call is over and the daemon knows the workplace is free again."""
    call = await daemon.sim.place_call(caller, callee, talk_ms=TALK_MS)
    assert await finished(call) == "transferred"
    await daemon.wait_busy([], "the workplace is free again")
    return routed_to(call)


async def second_call(
    daemon: RunningDaemon, logs: list[Any], caller: str
) -> tuple[str | None, str]:
    """A short call from ``caller`` to OTHER_NUMBER: where it went and how it was matched."""
    call = await daemon.sim.place_call(caller, OTHER_NUMBER)
    assert await finished(call) == "transferred"
    await daemon.wait_busy([], "the workplace is free again")
    line = await eventually(lambda: decisions(logs, caller)[-1:], "its decision line")
    return routed_to(call), str(line[0]["matched"])


async def test_a_caller_who_talked_to_the_fallback_manager_reaches_him_next_time(
    start_daemon: StartDaemon,
) -> None:
    """First call: nobody's client, the fallback sidorov takes it and they talk past
    min_talk_s. Second call, on the line whose fallback is kuznetsova: sidorov, matched learned."""
    daemon = await start_daemon(rules=rules())
    with capture_logs() as logs:
        assert await teach(daemon, CALLER, NUMBER) == SIDOROV_WP
        assert decisions(logs, CALLER)[0]["matched"] == "fallback"
        lesson = await eventually(lambda: lessons(logs, CALLER_N), "the learned line")
        assert (lesson[0]["manager"], lesson[0]["workplace"]) == ("sidorov", SIDOROV_WP)
        assert await second_call(daemon, logs, CALLER) == (SIDOROV_WP, "learned")
        assert (
            f"caller {CALLER_N} talked to sidorov before (learned)"
            in (decisions(logs, CALLER)[-1]["reasons"])
        )
        # A caller nobody taught anything goes where the line says.
        assert await second_call(daemon, logs, OTHER_CALLER) == (KUZNETSOVA_WP, "fallback")
    bounds = (await daemon.status())["bounds"]
    assert (bounds["learned"]["size"], bounds["learning"]["size"]) == (1, 0)


def forged_leg(daemon: RunningDaemon, call_id: str, state: str, **extra: Any) -> dict[str, Any]:
    """A ``connected``/``finished`` of an incoming call at sidorov's workplace, shaped as the
    simulator (and MTT's document) shapes them, for a call id nobody parked or decided."""
    centrex = daemon.sim.config.centrex_id
    info: Any = {
        "call": {"id": call_id, "tag": "forged-tag"},
        "callee": pbx_party(NUMBER, centrex, sip_id=SIDOROV_WP, account=SIDOROV_WP),
        "caller": client_party(OTHER_CALLER),
        "state": state,
        "transportId": "forged-transport",
        "type": "incoming",
    }
    if state == "finished":
        ended(info, extra.get("duration", 30), "Normal call clearing")
    return dict(call_notification(info))


async def test_a_forged_connected_finished_pair_teaches_nothing(
    start_daemon: StartDaemon,
) -> None:
    """connected and finished posted for a call id the daemon never decided, 0.5 s apart (past
    min_talk_s by our clock, duration 30): the caller's next call goes where the line says.
    That call, answered and long, then does teach (the control)."""
    daemon = await start_daemon(rules=rules())
    with capture_logs() as logs:
        code, _ = await daemon.post_event(forged_leg(daemon, "forged-1", "connected"))
        assert code == 200
        await daemon.wait_busy([SIDOROV_WP], "the forged leg is at sidorov's workplace")
        await asyncio.sleep(0.5)  # "talk" past min_talk_s by the daemon's clock
        code, _ = await daemon.post_event(forged_leg(daemon, "forged-1", "finished"))
        assert code == 200
        await daemon.wait_busy([], "the forged finished was handled")
        assert lessons(logs, OTHER_CALLER_N) == []
        assert await teach(daemon, OTHER_CALLER, OTHER_NUMBER) == KUZNETSOVA_WP
        assert decisions(logs, OTHER_CALLER)[0]["matched"] == "fallback"
        await eventually(lambda: lessons(logs, OTHER_CALLER_N), "the real call teaches")
        call = await daemon.sim.place_call(OTHER_CALLER, NUMBER)
        assert await finished(call) == "transferred"
        assert routed_to(call) == KUZNETSOVA_WP  # learned, not the line's sidorov
    assert [x["manager"] for x in lessons(logs, OTHER_CALLER_N)] == ["kuznetsova"]


def cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """``python -m router ARGS`` as a process."""
    return subprocess.run(
        [sys.executable, "-m", "router", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        check=False,
    )


def cli_config(daemon: RunningDaemon, path: Path) -> Path:
    """A config for commands on the daemon's memory storage (its tokens file, hence its map)."""
    config = {
        "mtt": {
            "client_id": daemon.config.mtt.client_id,
            "client_secret": daemon.config.mtt.client_secret,
            "redirect_uri": daemon.config.mtt.redirect_uri,
        },
        "storage": "memory",
        "tokens_file": str(daemon.tokens_path),
    }
    path.write_text(json.dumps(config), encoding="utf-8")
    return path


async def run_cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """:func:`cli` without blocking the loop the in-process daemon runs on."""
    return await asyncio.to_thread(cli, *args)


async def test_memory_lessons_survive_a_restart_and_the_cli_shows_and_forgets_them(
    start_daemon: StartDaemon, tmp_path: Path
) -> None:
    """Memory storage: stopping writes the learned file (0600, beside the tokens); `clients
    learned` shows it; a restarted daemon routes by it; `clients forget` reaches the running
    daemon, whose next call goes where the line says."""
    first = await start_daemon(rules=rules())
    config = cli_config(first, tmp_path / "cli.json")
    with capture_logs() as logs:
        assert await teach(first, CALLER, NUMBER) == SIDOROV_WP
        await eventually(lambda: lessons(logs, CALLER_N), "the learned line")
    assert await first.stop() == 0
    path = learned_path(first.tokens_path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600

    shown = await run_cli("clients", "learned", CALLER, "--json", "--config", config)
    assert shown.returncode == 0, shown.stderr
    entry = json.loads(shown.stdout)
    assert (entry["number"], entry["manager"]) == (CALLER_N, "sidorov")
    assert entry["learned_at"] < entry["expires_at"]
    table = await run_cli("clients", "learned", "8 999 000-11-22", "--config", config)
    assert table.stdout.split()[:6] == [
        "NUMBER",
        "MANAGER",
        "LEARNED",
        "EXPIRES",
        CALLER_N,
        "sidorov",
    ]

    second = await start_daemon(rules=rules())
    with capture_logs() as logs:
        assert await second_call(second, logs, CALLER) == (SIDOROV_WP, "learned")
        forgot = await run_cli("clients", "forget", CALLER, "--config", config)
        assert (forgot.returncode, forgot.stdout.strip()) == (0, f"{CALLER_N}: forgotten")

        async def forgotten() -> bool:
            return bool((await second.status())["bounds"]["learned"]["size"] == 0)

        await eventually(forgotten, "the running daemon follows the file")
        assert await second_call(second, logs, CALLER) == (KUZNETSOVA_WP, "fallback")
    missing = await run_cli("clients", "learned", CALLER, "--config", config)
    assert (missing.returncode, missing.stderr.strip()) == (1, f"{CALLER_N}: nothing learned")
    again = await run_cli("clients", "forget", CALLER, "--config", config)
    assert again.returncode == 1


@pytest.mark.e2e
async def test_a_lesson_learned_on_one_replica_is_used_by_the_other(cluster: Cluster) -> None:
    """Two replicas on one Redis. Replica A decides the first call and sees it through (the
    balancer sends it everything); replica B then routes the caller's next call by what A
    learned. `clients learned` and `clients forget` (processes) work on Redis too."""
    await cluster.store_tokens()
    replica_a, replica_b = await cluster.start_replicas(2, rules_source="redis", ready=False)
    await cluster.push_rules(rules())
    for replica in (replica_a, replica_b):
        await cluster.wait_up(replica)
    config = cluster.cli_config

    cluster.lb.mode = 0
    first = await cluster.sim.place(CALLER, NUMBER, talk_ms=TALK_MS)
    assert (await cluster.sim.outcome(first))["command"]["workplace"] == SIDOROV_WP

    async def learned_manager() -> str | None:
        code, out, _ = await cluster.cli(
            "clients", "learned", CALLER, "--json", "--config", str(config)
        )
        return str(json.loads(out)["manager"]) if code == 0 else None

    assert await eventually(learned_manager, "replica A stored the lesson") == "sidorov"
    await eventually(lambda: _idle(replica_b), "replica B sees sidorov free")

    cluster.lb.mode = 1
    second = await cluster.sim.place(CALLER, OTHER_NUMBER)
    assert (await cluster.sim.outcome(second))["command"]["workplace"] == SIDOROV_WP
    assert await replica_b.decisions("transferred") == 1

    code, out, err = await cluster.cli("clients", "forget", CALLER, "--config", str(config))
    assert (code, out.strip()) == (0, f"{CALLER_N}: forgotten"), err
    await eventually(lambda: _idle(replica_b), "replica B sees sidorov free")
    third = await cluster.sim.place(CALLER, OTHER_NUMBER)
    assert (await cluster.sim.outcome(third))["command"]["workplace"] == KUZNETSOVA_WP


async def _idle(replica: replicas.Replica) -> bool:
    return bool((await replica.status())["engine"]["busy"] == [])
