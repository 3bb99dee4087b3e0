"""``clients_file`` at scale: the compact table and its CSV reader, the read in a child process,
a running daemon following CSV edits (on a change and on SIGHUP) and keeping the last good
clients when the CSV breaks; the admin API's one log line per client edit."""

from __future__ import annotations

import os
import pickle
import signal
import sys
from collections.abc import Iterator, MutableMapping
from pathlib import Path
from typing import Any

import pytest
import structlog

from router.numbers import normalize
from router.rules import load_worker
from router.rules.client_table import ClientsRequest, ClientTable, read_clients
from router.simulator import SimConfig
from tests.fixtures.daemon import (
    IVANOV_WP,
    NUMBER,
    PETROVA_WP,
    SIDOROV_WP,
    RunningDaemon,
    StartDaemon,
    daemon_sim_config,
    finished,
    replace_file,
    routed_to,
)
from tests.fixtures.net import RedisServer
from tests.polling import eventually

RULES_V2 = f"""\
version: 2
timezone: "Europe/Moscow"
managers:
  ivanov: {{workplace: "{IVANOV_WP}"}}
  petrova: {{workplace: "{PETROVA_WP}"}}
  sidorov: {{workplace: "{SIDOROV_WP}"}}
clients_file: clients.csv
fallback:
  managers: [sidorov]
  otherwise: pbx
"""
CLIENT = "+7 911 000-00-01"
MANAGERS = ("ivanov", "petrova", "sidorov")
ADMIN_TOKEN = "admin-token-0123456789-abcdef"

Logs = list[MutableMapping[str, Any]]


@pytest.fixture
def sim_config() -> SimConfig:
    """The simulator for daemon tests (1 s parking window)."""
    return daemon_sim_config()


@pytest.fixture
def logs() -> Iterator[Logs]:
    """Every log line of the test (the in-process daemon's included)."""
    with structlog.testing.capture_logs() as captured:
        yield captured


def read(text: str, path: Path = Path("clients.csv")) -> tuple[dict[str, str], list[Any]]:
    found = read_clients(ClientsRequest(path, text, MANAGERS))
    assert found.error is None
    return dict(found.table), found.problems


def test_every_spelling_is_normalised_as_the_rules_do() -> None:
    """The fast path (plain digits) and the careful one give what ``normalize`` gives."""
    spellings = [
        "79210000000", "89210000001", "9210000002", "+7 921 000-00-03", " 79210000004 ",
        "8 (921) 000-00-05", "0123", "00493012345678", "+44 20 7946 0958",
        "1234567890123456789012",  # longer than the int64 the table packs: kept aside
    ]  # fmt: skip
    text = "".join(f"{raw},{MANAGERS[i % 3]}\n" for i, raw in enumerate(spellings))
    table, problems = read(text)
    assert problems == []
    assert table == {normalize(raw): MANAGERS[i % 3] for i, raw in enumerate(spellings)}


def test_refused_rows_name_their_lines() -> None:
    """A header and comments pass; each bad row is refused with its line; the same row twice is
    harmless, the same number with another manager is refused; a wordy row after data is no
    header."""
    text = (
        "number;manager\n"
        "# exported from the CRM\n"
        "\n"
        "79110000001;ivanov\n"
        "79110000001;ivanov\n"
        "8 911 000 00 01;petrova\n"
        "79110000002;ghost\n"
        "not a number;ivanov\n"
        "79110000003;ivanov;extra\n"
        "79110000004;iva nov\n"
        "number;manager\n"
    )
    table, problems = read(text)
    assert table == {"79110000001": "ivanov"}
    assert problems == [
        (6, "79110000001 is listed again with petrova (an earlier row says ivanov)"),
        (7, "unknown manager 'ghost'"),
        (8, "not a phone number: 'not a number'"),
        (9, "expected 2 columns NUMBER,MANAGER, got 3"),
        (10, "not a manager id: 'iva nov'"),
        (11, "not a phone number: 'number'"),
    ]


def test_the_table_is_a_mapping_and_pickles_as_buffers() -> None:
    """get/in/len/iteration of the packed rows and the rules' own clients; pickled and back."""
    found = read_clients(
        ClientsRequest(Path("c.csv"), "79110000002,petrova\n0123,ivanov\n", MANAGERS)
    )
    table = found.table.with_extra({"79219462761": "sidorov"})
    assert len(table) == 3
    assert dict(table) == {"79219462761": "sidorov", "0123": "ivanov", "79110000002": "petrova"}
    assert (table.get("0123"), table.get("123"), "79110000002" in table) == ("ivanov", None, True)
    assert table["79219462761"] == "sidorov"
    with pytest.raises(KeyError):
        table["79990000000"]
    again = pickle.loads(pickle.dumps(table))
    assert isinstance(again, ClientTable)
    assert dict(again) == dict(table)


def test_rules_are_loaded_in_a_child_process(tmp_path: Path) -> None:
    """The child's rules are the ones a load here gives (clients, managers, the file's
    signature); so are its errors, named by line."""
    csv = tmp_path / "clients.csv"
    rows = [f"7911{i:07d},{MANAGERS[i % 3]}" for i in range(5000)]
    csv.write_text("number,manager\n" + "\n".join(rows) + "\n", encoding="utf-8")
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES_V2, encoding="utf-8")
    job = load_worker.Job(str(rules), path=str(rules))
    here, child = load_worker.load_here(job), load_worker.load_in_child(job)
    assert here.rules is not None
    assert child.rules is not None
    assert dict(child.rules.clients) == dict(here.rules.clients)
    assert len(child.rules.clients) == 5000
    assert child.rules.clients.get("79110000002") == "sidorov"
    assert dict(pickle.loads(pickle.dumps(child.rules.clients))) == dict(here.rules.clients)
    assert child.rules.managers == here.rules.managers
    assert (child.clients_path, child.clients_signature) == (csv, here.clients_signature)
    assert child.clients_signature is not None

    csv.write_text("number,manager\n79110000000,ghost\nx,y\n", encoding="utf-8")
    broken = load_worker.load_in_child(job)
    assert broken.rules is None
    assert broken.error is not None
    assert broken.error.lines() == [
        f"{csv}:2: unknown manager 'ghost'",
        f"{csv}:3: not a phone number: 'x'",
    ]

    text = load_worker.Job("pushed", text=RULES_V2, clients_text="79110000001,petrova\n")
    pushed = load_worker.load_in_child(text)
    assert pushed.rules is not None
    assert dict(pushed.rules.clients) == {"79110000001": "petrova"}
    assert pushed.clients_path is None


def test_big_rules_are_loaded_in_a_child_small_ones_here(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The rules file and the clients_file it names, together past the limit: a child; under
    it: here (a child costs more than the load)."""
    (tmp_path / "clients.csv").write_text("79110000001,ivanov\n" * 200, encoding="utf-8")
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES_V2, encoding="utf-8")
    job = load_worker.Job(str(rules), path=str(rules))
    where: list[str] = []
    monkeypatch.setattr(load_worker, "load_here", lambda job: where.append("here"))
    monkeypatch.setattr(load_worker, "load_in_child", lambda job: where.append("child"))
    size = len(RULES_V2) + 200 * len("79110000001,ivanov\n")
    for limit in (size, size + 1):
        monkeypatch.setattr(load_worker, "OFFLOAD_BYTES", limit)
        load_worker.load_off_loop(job)
    pushed = load_worker.Job("pushed", text="x" * 10, clients_text="y" * 10)
    for limit in (20, 21):
        monkeypatch.setattr(load_worker, "OFFLOAD_BYTES", limit)
        load_worker.load_off_loop(pushed)
    assert where == ["child", "here", "child", "here"]


def test_a_failed_child_is_a_load_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The child dies: the rules do not load, and the line says why."""
    rules = tmp_path / "rules.yaml"
    monkeypatch.setattr(sys, "executable", "/bin/false")
    loaded = load_worker.load_in_child(load_worker.Job(str(rules), path=str(rules)))
    assert loaded.rules is None
    assert loaded.error is not None
    assert loaded.error.lines() == [
        f"{rules}:0: the process loading the rules failed (exit 1: no output)"
    ]


async def call_to(daemon: RunningDaemon, caller: str = CLIENT) -> str | None:
    """The workplace a call from ``caller`` was transferred to, once it is over."""
    call = daemon.sim.start_call(caller, NUMBER)
    await finished(call)
    return routed_to(call)


async def reloads(daemon: RunningDaemon, result: str, count: int) -> None:
    await eventually(
        lambda: daemon.sample("mtt_router_rules_reloads_total", result=result) >= count,
        f"{count} rules reloads ({result})",
    )


async def test_a_running_daemon_follows_the_csv(
    start_daemon: StartDaemon, tmp_path: Path, logs: Logs, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Edited in place or replaced, the CSV is reloaded (in a child process: the size limit is
    lowered to 0) and the next call follows it; a broken CSV keeps the last good clients, with
    one log line naming CSV:LINE and an error counted; SIGHUP reloads it when the watcher could
    not tell (same size, time and inode)."""
    monkeypatch.setattr(load_worker, "OFFLOAD_BYTES", 0)
    csv = tmp_path / "clients.csv"
    csv.write_text("number,manager\n79110000001,ivanov\n", encoding="utf-8")
    daemon = await start_daemon(rules=RULES_V2)
    assert await call_to(daemon) == IVANOV_WP

    csv.write_text("number,manager\n79110000001,petrova\n", encoding="utf-8")  # in place
    await reloads(daemon, "ok", 2)
    assert await call_to(daemon) == PETROVA_WP

    replace_file(csv, "number,manager\n79110000001,ivanov\n79110000002,ghost\n")
    await reloads(daemon, "error", 1)
    rejected = [line for line in logs if line["event"] == "rules_rejected"]
    assert [line["problems"] for line in rejected] == [[f"{csv}:3: unknown manager 'ghost'"]]
    assert (await daemon.status())["rules"]["last_error"] == f"{csv}:3: unknown manager 'ghost'"
    assert await call_to(daemon) == PETROVA_WP  # the last good clients

    replace_file(csv, "number,manager\n79110000001,sidorov\n")
    await reloads(daemon, "ok", 3)
    assert await call_to(daemon) == SIDOROV_WP

    # Same length, same inode, the old time put back: only SIGHUP tells the daemon.
    before = csv.stat()
    with csv.open("r+", encoding="utf-8") as handle:
        handle.write("number,manager\n79110000001,petrova\n")
    os.utime(csv, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert (csv.stat().st_size, csv.stat().st_ino) == (before.st_size, before.st_ino)
    os.kill(os.getpid(), signal.SIGHUP)
    await reloads(daemon, "ok", 4)
    assert [line["reason"] for line in logs if line["event"] == "rules_reload"][-1] == "SIGHUP"
    assert await call_to(daemon) == PETROVA_WP
    loaded = [line for line in logs if line["event"] == "rules_loaded"]
    assert all(line["clients"] == 1 and line["load_s"] >= 0 for line in loaded)


async def test_client_edits_through_the_admin_api_are_logged(
    start_daemon: StartDaemon, redis_server: RedisServer, logs: Logs
) -> None:
    """PUT and DELETE /clients/{number}: one log line each, with the number, the manager and
    the peer's address."""
    daemon = await start_daemon(
        storage=redis_server.url,
        extra={"server": {"admin_token": ADMIN_TOKEN}},
        authorised=False,
        wait_ready=False,
    )
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    async with daemon.http.get(f"{daemon.admin_url}/oauth/start", headers=auth) as resp:
        assert resp.status == 200  # the login, through the simulator, into Redis
    await eventually(lambda: _ready(daemon), "/readyz answers 200")
    url = f"{daemon.admin_url}/clients/+79110000001"
    async with daemon.http.put(url, json={"manager": "petrova"}, headers=auth) as resp:
        assert resp.status == 200, await resp.text()
    async with daemon.http.delete(url, headers=auth) as resp:
        assert resp.status == 200, await resp.text()
    async with daemon.http.delete(url, headers=auth) as resp:
        assert resp.status == 404  # nothing deleted: nothing logged
    edits = [
        {k: line.get(k) for k in ("caller", "manager", "was", "who")}
        for line in logs
        if line["event"] == "client_edited"
    ]
    assert edits == [
        {"caller": "79110000001", "manager": "petrova", "was": None, "who": "127.0.0.1"},
        {"caller": "79110000001", "manager": None, "was": "petrova", "who": "127.0.0.1"},
    ]


async def _ready(daemon: RunningDaemon) -> bool:
    return (await daemon.admin("/readyz"))[0] == 200
