"""Rules versions in Redis with their ``clients_file``: the last ten kept, history, rollback;
the store, the CLI as processes, and a running daemon (``rules.source: redis``) following."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from router.simulator import SimConfig
from router.state.redis_conn import RedisOps
from router.state.redis_rules import KEEP, RulesStore, split_parts
from tests.fixtures.daemon import (
    IVANOV_WP,
    NUMBER,
    PETROVA_WP,
    RunningDaemon,
    StartDaemon,
    daemon_sim_config,
    finished,
    routed_to,
)
from tests.polling import eventually
from tests.storage.test_cli_storage import process, write_config

RULES_V2 = f"""\
version: 2
timezone: "Europe/Moscow"
managers:
  ivanov: {{workplace: "{IVANOV_WP}"}}
  petrova: {{workplace: "{PETROVA_WP}"}}
clients_file: crm/clients.csv
fallback:
  managers: []
  otherwise: pbx
"""
CLIENT = "79110000001"


@pytest.fixture
def sim_config() -> SimConfig:
    """The simulator for daemon tests (1 s parking window)."""
    return daemon_sim_config()


def test_parts_end_at_line_ends_and_join_back() -> None:
    """A clients_file is stored in parts cut after a newline, never inside a character."""
    text = "".join(f"7911{i:07d},менеджер{i % 7}\n" for i in range(3000))
    parts = split_parts(text, size=1000)
    assert len(parts) > 10
    assert "".join(parts) == text
    assert all(part.endswith("\n") for part in parts)
    assert split_parts("") == []


async def test_the_last_ten_versions_are_kept_with_their_clients(ops: RedisOps) -> None:
    """Twelve pushes: ten kept, newest first; a content shared by versions is stored once and
    deleted with the last kept version naming it; a big one is read back part by part."""
    store = RulesStore(ops)
    small = "79110000001,ivanov\n"
    big = "".join(f"7911{i:07d},petrova\n" for i in range(150_000))  # ~3 MB: several parts
    for n in range(1, 13):
        clients = big if n == 12 else small if n > 1 else "79110000009,ivanov\n"
        version = await store.push(
            f"version: 2 # {n}\n", source=f"r{n}.yaml", clients=clients, clients_file="c.csv",
            counts={"managers": 2, "clients": n},
        )  # fmt: skip
        assert version == n
    kept = await store.history()
    assert [v.version for v in kept] == list(range(12, 2, -1))
    assert len(kept) == KEEP
    assert kept[-1].counts == {"managers": 2, "clients": 3}
    assert (kept[0].source, kept[0].clients_file, kept[0].clients_bytes) == (
        "r12.yaml",
        "c.csv",
        len(big.encode()),
    )
    assert kept[0].host
    blobs = await ops.client.keys(f"{ops.key('rules', 'clients')}:*")
    assert len(blobs) == 2  # version 1's content went with it; the shared one is kept once
    assert await ops.client.llen(f"{ops.key('rules', 'clients')}:{_sha(big)}") > 2
    current = await store.pull()
    assert current is not None
    assert (current.version, current.clients, current.clients_file) == (12, big, "c.csv")
    old = await store.pull_version(5)
    assert old is not None
    assert (old.text, old.clients) == ("version: 2 # 5\n", small)
    assert await store.pull_version(2) is None


async def test_rollback_stores_the_old_content_as_a_new_version(ops: RedisOps) -> None:
    """A rollback is the next version, with the old text and clients; one that is not kept is
    refused; a version pushed before versions were kept becomes the first kept one."""
    store = RulesStore(ops)
    await ops.client.hset(store.key, mapping={"version": 4, "text": "old: 1\n", "source": "o"})
    assert await store.push("version: 2 # a\n", clients="1,a\n", clients_file="c.csv") == 5
    assert await store.push("version: 2 # b\n") == 6
    assert [v.version for v in await store.history()] == [6, 5, 4]
    assert await store.rollback(5) == 7
    current = await store.pull()
    assert current is not None
    assert (current.version, current.text, current.clients) == (7, "version: 2 # a\n", "1,a\n")
    newest = (await store.history())[0]
    assert (newest.version, newest.rollback_of, newest.source) == (7, 5, "")
    assert await store.rollback(4) == 8
    assert (await store.pull()) == (8, "old: 1\n", None, "")
    assert await store.rollback(99) is None
    assert await store.version() == 8


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def write_rules(folder: Path, manager: str) -> Path:
    """rules.yaml and crm/clients.csv naming ``manager`` for :data:`CLIENT`."""
    (folder / "crm").mkdir(exist_ok=True)
    (folder / "crm" / "clients.csv").write_text(f"number,manager\n{CLIENT},{manager}\n")
    rules = folder / "rules.yaml"
    rules.write_text(RULES_V2, encoding="utf-8")
    return rules


def test_history_and_rollback_as_processes(tmp_path: Path, redis_url: str) -> None:
    """push (with its CSV), history (table and JSON), rollback, pull: the real CLI."""
    config = write_config(tmp_path / "config.yaml", redis_url)
    for manager in ("ivanov", "petrova", "ivanov"):
        pushed = process("rules", "push", write_rules(tmp_path, manager), "--config", config)
        assert pushed.returncode == 0, pushed.stderr
    assert "pushed as version 3 with crm/clients.csv (1 clients)" in pushed.stdout

    history = process("rules", "history", "--config", config, "--json")
    assert history.returncode == 0, history.stderr
    listed = json.loads(history.stdout)
    assert [(v["version"], v["current"]) for v in listed] == [(3, True), (2, False), (1, False)]
    assert (listed[0]["counts"]["clients"], listed[0]["clients_file"]) == (1, "crm/clients.csv")
    table = process("rules", "history", "--config", config).stdout.splitlines()
    assert table[0].split()[:4] == ["version", "pushed", "host", "file"]
    assert [line.split()[0] for line in table[1:]] == ["3", "2", "1"]
    assert "current" in table[1]

    missing = process("rules", "rollback", "9", "--config", config)
    assert (missing.returncode, missing.stdout) == (1, "")
    assert missing.stderr.strip() == "rules version 9 is not kept (kept: 3, 2, 1)"

    rolled = process("rules", "rollback", "2", "--config", config)  # petrova's
    assert rolled.returncode == 0, rolled.stderr
    assert rolled.stdout.strip() == (
        "rolled back: version 4 is the content of version 2; "
        "replicas with rules.source: redis load it within seconds"
    )
    again = json.loads(process("rules", "history", "--config", config, "--json").stdout)
    assert (again[0]["version"], again[0]["rollback_of"]) == (4, 2)

    out = tmp_path / "pulled" / "rules.yaml"
    out.parent.mkdir()
    pulled = process("rules", "pull", out, "--config", config)
    assert pulled.returncode == 0, pulled.stderr
    assert (out.parent / "crm" / "clients.csv").read_text() == f"number,manager\n{CLIENT},petrova\n"
    assert process("rules", "check", out).returncode == 0


async def call_to(daemon: RunningDaemon) -> str | None:
    call = daemon.sim.start_call(CLIENT, NUMBER)
    await finished(call)
    return routed_to(call)


async def test_a_running_replica_follows_pushes_and_a_rollback(
    start_daemon: StartDaemon, tmp_path: Path, redis_url: str
) -> None:
    """rules.source: redis: a pushed CSV edit is followed by the next call; so is a rollback,
    done by the CLI as a process."""
    config = write_config(tmp_path / "cli.yaml", redis_url)
    folder = tmp_path / "edit"
    folder.mkdir()
    assert (
        process("rules", "push", write_rules(folder, "ivanov"), "--config", config).returncode == 0
    )
    daemon = await start_daemon(
        storage=redis_url, extra={"rules": {"source": "redis"}}, authorised=False, wait_ready=False
    )
    async with daemon.http.get(f"{daemon.admin_url}/oauth/start") as resp:
        assert resp.status == 200  # the login, through the simulator, into Redis
    await daemon.wait_directory()
    await eventually(lambda: _version(daemon, 1), "version 1 loaded")
    assert await call_to(daemon) == IVANOV_WP

    edited = process("rules", "push", write_rules(folder, "petrova"), "--config", config)
    assert edited.returncode == 0, edited.stderr
    await eventually(lambda: _version(daemon, 2), "version 2 loaded")
    assert await call_to(daemon) == PETROVA_WP

    rolled = process("rules", "rollback", "1", "--config", config)
    assert rolled.returncode == 0, rolled.stderr
    await eventually(lambda: _version(daemon, 3), "version 3 (the content of 1) loaded")
    assert await call_to(daemon) == IVANOV_WP
    assert (await daemon.status())["rules"]["counts"]["clients"] == 1


async def _version(daemon: RunningDaemon, version: int) -> bool:
    rules = (await daemon.status())["rules"]
    return bool(rules["loaded"] and rules["version"] == version)
