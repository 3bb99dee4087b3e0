"""``mtt-router replay``: the rules' decisions on a capture, as at the time of each call.

Unit tests on captures written here (times, presence, which tryings are parked, the storage), and
end to end: the daemon captures a live run against the simulator, the real CLI replays it in a
subprocess and must decide every call as the daemon did.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from router.capture import Captured, capture_line
from router.cli import main
from router.config import Config, load_config
from router.replay import Replayer, ReplayReport, replay
from router.rules.loader import load_rules
from router.simulator import SimCall, SimConfig
from router.state.factory import open_stores
from tests.fixtures import daemon as daemon_fixtures
from tests.fixtures.daemon import (
    IVANOV_CLIENT,
    IVANOV_WP,
    NUMBER,
    PETROVA_CLIENT,
    PETROVA_WP,
    PREFIX_CALLER,
    RULES,
    SIDOROV_WP,
    UNKNOWN_CALLER,
    WAIT_S,
    RunningDaemon,
    StartDaemon,
    daemon_sim_config,
    finished,
    outcome_of,
)
from tests.polling import eventually

ROOT = Path(__file__).resolve().parents[1]
MOVED = RULES.replace('"+7 921 946-27-61": ivanov', '"+7 921 946-27-61": petrova')
""":data:`RULES` with one client entry moved from ivanov to petrova."""
SCHEDULED = (
    RULES.replace('    name: "Иван Иванов"\n', '    name: "Иван Иванов"\n    schedule: office\n')
    + 'schedules:\n  office:\n    mon-fri: "09:00-18:00"\n'
)
MONDAY_10_MSK = datetime(2026, 11, 30, 7, 0, tzinfo=UTC).timestamp()
SUNDAY_03_MSK = datetime(2026, 11, 29, 0, 0, tzinfo=UTC).timestamp()


@pytest.fixture
def sim_config() -> SimConfig:
    """The simulator for daemon tests (1 s parking window)."""
    return daemon_sim_config()


# -- captures written here --------------------------------------------------------------------


def info(call_id: str, state: str, caller: str, callee: str, **extra: Any) -> dict[str, Any]:
    """A ``callNotifications`` body (callee ``accountId`` = the number or the workplace)."""
    call_info = {
        "call": {"id": call_id, "tag": "t"},
        "caller": {"id": caller, "accountId": f"{caller}@pstn", "forwarderList": []},
        "callee": {"id": callee, "accountId": callee, "forwarderList": []},
        "state": state,
        "type": "incoming",
        "transportId": "10.133.1.1:5073",
    } | extra
    return {"event": "callNotifications", "result": {"callInfo": call_info}}


def write_capture(path: Path, posts: list[tuple[float, int, Any]]) -> Path:
    """A capture file of ``(epoch seconds, status, body)`` (bytes as they are, else JSON)."""
    with path.open("wb") as out:
        for at, status, body in posts:
            raw = body if isinstance(body, bytes) else json.dumps(body).encode()
            out.write(capture_line(Captured(at, "10.0.0.1", status, raw, len(raw))))
    return path


def run_replay(path: Path, rules: str = RULES, **kwargs: Any) -> ReplayReport:
    """:func:`router.replay.replay` on ``path`` with ``rules`` (text)."""
    replayer = Replayer(load_rules(rules, "rules.yaml"), **kwargs)
    return asyncio.run(replay(path, replayer))


def destinations(report: ReplayReport) -> dict[str, tuple[str, str | None]]:
    """Call id -> (outcome, workplace)."""
    return {c.call_id: (c.destination.outcome, c.destination.workplace) for c in report.calls}


def test_decides_as_at_the_time_of_the_call(tmp_path: Path) -> None:
    """``now`` is each call's received_at: in office hours ivanov, on a Sunday night sidorov."""
    path = write_capture(
        tmp_path / "c.jsonl",
        [
            (MONDAY_10_MSK, 200, info("a", "trying", IVANOV_CLIENT, NUMBER)),
            (SUNDAY_03_MSK, 200, info("b", "trying", IVANOV_CLIENT, NUMBER)),
        ],
    )
    report = run_replay(path, SCHEDULED)
    assert destinations(report) == {
        "a": ("transferred", IVANOV_WP),
        "b": ("transferred", SIDOROV_WP),
    }
    assert report.calls[0].at == datetime.fromtimestamp(MONDAY_10_MSK, UTC)
    assert any("off schedule" in reason for reason in report.calls[1].decision.reasons)


def test_presence_is_rebuilt_from_the_notifications(tmp_path: Path) -> None:
    """A manager connected on another call is skipped until that call's finished."""
    t = MONDAY_10_MSK
    path = write_capture(
        tmp_path / "c.jsonl",
        [
            (t, 200, info("a", "trying", UNKNOWN_CALLER, NUMBER)),
            (t + 1, 200, info("a", "showing", UNKNOWN_CALLER, IVANOV_WP)),
            (t + 2, 200, info("a", "connected", UNKNOWN_CALLER, IVANOV_WP)),
            (t + 3, 200, info("b", "trying", IVANOV_CLIENT, NUMBER)),
            (t + 4, 200, info("a", "finished", UNKNOWN_CALLER, IVANOV_WP, duration=3)),
            (t + 5, 200, info("c", "trying", IVANOV_CLIENT, NUMBER)),
        ],
    )
    report = run_replay(path)
    assert destinations(report) == {
        "a": ("transferred", SIDOROV_WP),
        "b": ("transferred", SIDOROV_WP),
        "c": ("transferred", IVANOV_WP),
    }
    assert (
        f"ivanov is busy (workplace {IVANOV_WP} is on a call)" in report.calls[1].decision.reasons
    )


def test_which_tryings_are_parked(tmp_path: Path) -> None:
    """Not parked: a leg to a workplace seen in the capture, a forwarded leg, a makeCall, a
    refused POST; a repeated call id is a duplicate."""
    t = MONDAY_10_MSK
    outgoing = info("out", "trying", NUMBER, "79990000000", type="outgoing")
    outgoing["result"]["callInfo"]["caller"]["accountId"] = IVANOV_WP  # the workplace calling
    forwarded = info("fw", "trying", UNKNOWN_CALLER, NUMBER)
    forwarded["result"]["callInfo"]["callee"]["forwarderList"] = [IVANOV_WP]
    path = write_capture(
        tmp_path / "c.jsonl",
        [
            (t, 200, info("p", "trying", PETROVA_CLIENT, NUMBER)),
            (t, 200, info("p", "trying", PETROVA_CLIENT, NUMBER)),
            (t + 1, 200, info("wp", "trying", UNKNOWN_CALLER, PETROVA_WP)),
            (t + 2, 200, info("x", "showing", UNKNOWN_CALLER, PETROVA_WP)),
            (t + 3, 200, forwarded),
            (t + 4, 200, outgoing),
            (t + 5, 400, info("bad", "trying", UNKNOWN_CALLER, NUMBER)),
            (t + 6, 200, {"event": "vpbxNotifications", "result": {"eventType": "numbersChanged"}}),
        ],
    )
    report = run_replay(path)
    assert destinations(report) == {"p": ("transferred", PETROVA_WP)}
    assert (report.duplicates, report.refused, report.notifications) == (1, 1, 7)
    assert report.workplaces == {PETROVA_WP, IVANOV_WP}


def test_storage_not_consulted_without_a_lookup_and_read_with_one(tmp_path: Path) -> None:
    """Without a storage the client map says "not consulted"; with one its entry wins."""
    path = write_capture(
        tmp_path / "c.jsonl", [(MONDAY_10_MSK, 200, info("a", "trying", IVANOV_CLIENT, NUMBER))]
    )
    reasons = run_replay(path).calls[0].decision.reasons
    assert reasons[0] == "storage map clients: not consulted (replay without --config)"

    async def get(number: str) -> str | None:
        return "petrova" if number == "79219462761" else None

    report = run_replay(path, lookup={"clients": get})
    assert destinations(report) == {"a": ("transferred", PETROVA_WP)}
    assert "not consulted" not in " ".join(report.calls[0].decision.reasons)


def test_bad_lines_are_skipped_and_reported(tmp_path: Path) -> None:
    """Lines that are not capture lines are skipped with their number; the rest is replayed."""
    path = write_capture(
        tmp_path / "c.jsonl", [(MONDAY_10_MSK, 200, info("a", "trying", IVANOV_CLIENT, NUMBER))]
    )
    with path.open("ab") as out:
        out.write(b"{torn line\n\n[1, 2]\n")
        out.write(capture_line(Captured(MONDAY_10_MSK, None, 200, b"{not json", 9)))
    report = run_replay(path)
    assert destinations(report) == {"a": ("transferred", IVANOV_WP)}
    assert [(bad.line, bad.message.split(" (")[0]) for bad in report.skipped] == [
        (2, "not a JSON line"),
        (4, "not a capture line"),
        (5, "status 200 but the body is not JSON"),
    ]


# -- the CLI ----------------------------------------------------------------------------------


def replay_process(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """``python -m router replay ARGS`` as a process."""
    return subprocess.run(
        [sys.executable, "-m", "router", "replay", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        check=False,
    )


@pytest.fixture
def capture_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Daemons started in this test capture into the returned path."""
    path = tmp_path / "capture.jsonl"
    original = daemon_fixtures.daemon_config

    def with_capture(*args: Any, **kwargs: Any) -> Config:
        config = original(*args, **kwargs)
        return dataclasses.replace(config, log=dataclasses.replace(config.log, capture=str(path)))

    monkeypatch.setattr(daemon_fixtures, "daemon_config", with_capture)
    return path


async def live_run(daemon: RunningDaemon) -> list[SimCall]:
    """Calls of every kind: client, prefix, unknown, a manager busy, a forwarded leg, a repeat."""
    sim = daemon.sim
    talking = await sim.place_call(IVANOV_CLIENT, NUMBER, talk_ms=1500)
    assert await outcome_of(talking) == "transferred"

    async def ivanov_busy() -> bool:
        return bool((await daemon.status())["engine"]["busy"] == [IVANOV_WP])

    await eventually(ivanov_busy, "the daemon knows ivanov is on a call")
    calls = [talking, await sim.place_call(IVANOV_CLIENT, NUMBER)]  # -> sidorov
    for caller in (PREFIX_CALLER, UNKNOWN_CALLER, PETROVA_CLIENT):
        calls.append(await sim.place_call(caller, NUMBER))
    calls.append(await sim.place_call(UNKNOWN_CALLER, NUMBER, forwarders=[SIDOROV_WP]))
    sim.faults.duplicate_trying = 1
    calls.append(await sim.place_call(PETROVA_CLIENT, NUMBER))
    for call in calls:
        await finished(call)
        await asyncio.wait_for(call.wait_done(), WAIT_S)
    return calls


def live_decisions(calls: list[SimCall]) -> dict[str, tuple[str, str | None]]:
    """What MTT (the simulator) saw for each parked call: (outcome, workplace)."""
    out = {}
    for call in calls:
        if call.parked and call.command is not None:
            kind = "transferred" if call.command.kind == "transfer" else "fallback_pbx"
            out[call.id] = (kind, call.command.workplace)
    return out


async def test_replay_decides_like_the_live_run_and_against_lists_the_moved_client(
    start_daemon: StartDaemon, capture_path: Path, tmp_path: Path
) -> None:
    """Capture a live run, replay it by the same rules: the same decision for every call; by
    rules with one client moved: exactly that client's calls listed, with a count."""
    daemon = await start_daemon()
    calls = await live_run(daemon)
    await daemon.stop()
    live = live_decisions(calls)
    assert len(live) == 6  # the forwarded leg is not parked; the repeat is one call

    done = await asyncio.to_thread(
        replay_process, capture_path, "--rules", daemon.rules_path, "--json"
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    replayed = {c["call_id"]: (c["outcome"], c["workplace"]) for c in report["calls"]}
    assert replayed == live
    assert report["counts"]["duplicates"] == 1
    assert {(row["outcome"], row["manager"]): row["calls"] for row in report["summary"]} == {
        ("transferred", "ivanov"): 1,
        ("transferred", "sidorov"): 2,
        ("transferred", "petrova"): 3,
    }

    moved = tmp_path / "moved.yaml"
    moved.write_text(MOVED, encoding="utf-8")
    done = await asyncio.to_thread(
        replay_process, capture_path, "--rules", daemon.rules_path, "--against", moved, "--json"
    )
    assert done.returncode == 0, done.stderr
    against = json.loads(done.stdout)["against"]
    client_calls = {call.id for call in calls if call.caller == IVANOV_CLIENT}
    assert {c["call_id"] for c in against["calls"]} == client_calls
    assert (against["changed"], against["of"]) == (2, 6)
    assert {c["with"]["workplace"] for c in against["calls"]} == {PETROVA_WP}

    done = await asyncio.to_thread(
        replay_process, capture_path, "--rules", daemon.rules_path, "--against", moved
    )
    assert done.returncode == 0, done.stderr
    assert f"against {moved}: 2 of 6 calls would go elsewhere" in done.stdout
    assert "storage map clients: not consulted (replay without --config)" in done.stdout


def test_cli_reports_bad_lines_and_refuses_invalid_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Bad lines: FILE:LINE on stderr, exit 0; no capture line at all, a missing file, invalid
    rules: exit 1 (rules problems as PATH:LINE: message)."""
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES, encoding="utf-8")
    path = write_capture(
        tmp_path / "c.jsonl", [(MONDAY_10_MSK, 200, info("a", "trying", IVANOV_CLIENT, NUMBER))]
    )
    with path.open("ab") as capture:
        capture.write(b"garbage\n")
    assert main(["replay", str(path), "--rules", str(rules)]) == 0
    out, err = capsys.readouterr()
    assert f"{path}:2: not a JSON line" in err
    assert "1 parked calls" in out
    assert "transferred: ivanov at" in out

    junk = tmp_path / "junk.txt"
    junk.write_text("hello\nworld\n", encoding="utf-8")
    assert main(["replay", str(junk), "--rules", str(rules)]) == 1
    assert "not a capture file" in capsys.readouterr().err
    assert main(["replay", str(tmp_path / "missing"), "--rules", str(rules)]) == 1
    assert "cannot read" in capsys.readouterr().err

    bad_rules = tmp_path / "bad.yaml"
    bad_rules.write_text(RULES.replace('": ivanov', '": nobody'), encoding="utf-8")
    assert main(["replay", str(path), "--rules", str(bad_rules)]) == 1
    assert capsys.readouterr().out.startswith(f"{bad_rules}:")
    assert main(["replay", str(path), "--rules", str(rules), "--against", str(bad_rules)]) == 1


class Terminal(io.StringIO):
    """A buffer that says it is a terminal."""

    def isatty(self) -> bool:
        """Always a TTY."""
        return True


def test_progress_line_only_on_a_terminal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """stderr on a terminal gets a progress bar (erased at the end); a pipe gets none
    (tests/test_progress.py runs the command on a real pseudo-terminal)."""
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES, encoding="utf-8")
    path = write_capture(
        tmp_path / "c.jsonl", [(MONDAY_10_MSK, 200, info("a", "trying", IVANOV_CLIENT, NUMBER))]
    )
    assert main(["replay", str(path), "--rules", str(rules)]) == 0
    assert "replay c.jsonl" not in capsys.readouterr().err
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    monkeypatch.setenv("TERM", "xterm")
    assert main(["replay", str(path), "--rules", str(rules)]) == 0
    assert "replay c.jsonl \x1b" in terminal.getvalue()
    assert "━" in terminal.getvalue()
    assert terminal.getvalue().endswith("\x1b[2K")  # the bar's line erased


async def test_config_consults_the_client_map_without_claiming(
    tmp_path: Path, redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """With --config the storage's client map is read (its entry wins); memory storage keeps
    none and says so."""
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES, encoding="utf-8")
    path = write_capture(
        tmp_path / "c.jsonl", [(MONDAY_10_MSK, 200, info("a", "trying", IVANOV_CLIENT, NUMBER))]
    )
    config = tmp_path / "config.yaml"
    base = (
        'mtt:\n  client_id: "id"\n  client_secret: "s"\n  redirect_uri: "https://r.example/mtt"\n'
    )
    config.write_text(base + f'storage: "{redis_url}"\n', encoding="utf-8")
    stores = await open_stores(load_config(config))
    assert stores.clients is not None
    await stores.clients.set(IVANOV_CLIENT, "petrova")
    await stores.aclose()

    args = ["replay", str(path), "--rules", str(rules), "--config", str(config), "--json"]
    assert await asyncio.to_thread(main, args) == 0
    call = json.loads(capsys.readouterr().out)["calls"][0]
    assert (call["workplace"], call["reasons"][0]) == (
        PETROVA_WP,
        "caller 79219462761 is client of petrova (client store)",
    )

    config.write_text(base + 'storage: "memory"\n', encoding="utf-8")
    assert await asyncio.to_thread(main, args) == 0
    call = json.loads(capsys.readouterr().out)["calls"][0]
    assert call["workplace"] == IVANOV_WP
    assert (
        call["reasons"][0]
        == "storage map clients: not consulted (the memory storage keeps no such map)"
    )
