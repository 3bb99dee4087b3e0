"""`mtt-router clients ...` and `mtt-router rules push|pull` against a real Redis, as processes."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import structlog

from router import cli
from router.commands import _storage
from router.state.redis_conn import connect
from tests.fixtures.net import RedisServer
from tests.storage.conftest import MakeOps

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_RULES = ROOT / "rules" / "example.yaml"


def write_config(path: Path, storage: str, *, source: str = "redis") -> Path:
    path.write_text(
        "mtt:\n"
        '  client_id: "ccb350cc-6218-40b0-b134-3d290f00b9e7"\n'
        '  client_secret: "secret"\n'
        '  redirect_uri: "https://router.example.ru/mtt"\n'
        f'storage: "{storage}"\n'
        f"rules:\n  source: {source}\n"
        "log:\n  format: console\n",
        encoding="utf-8",
    )
    return path


@pytest.fixture
def config(tmp_path: Path, redis_url: str, make_ops: MakeOps) -> Path:
    """A config file whose storage is the test's (flushed) Redis, with rules.source: redis."""
    return write_config(tmp_path / "config.yaml", redis_url)


def process(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """Run ``python -m router ARGS`` as a process and capture its output."""
    return subprocess.run(
        [sys.executable, "-m", "router", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        check=False,
    )


@dataclass
class Ran:
    """Exit code and output of one in-process command."""

    returncode: int
    stdout: str
    stderr: str


class Cli:
    """``router.cli.main`` in this process (fast, and counted by coverage)."""

    def __init__(self, capsys: pytest.CaptureFixture[str]) -> None:
        self._capsys = capsys

    def __call__(self, *args: str | Path) -> Ran:
        self._capsys.readouterr()
        code = cli.main([str(arg) for arg in args])
        out, err = self._capsys.readouterr()
        return Ran(code, out, err)


@pytest.fixture
def mtt_router(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> Iterator[Cli]:
    """Runs commands in-process, with log lines captured apart from the command's output.

    The commands' own structlog set-up is skipped: it would keep capsys's stream after the test.
    """
    monkeypatch.setattr(_storage, "setup_cli_logging", lambda *args, **kwargs: None)
    with structlog.testing.capture_logs():
        yield Cli(capsys)


def test_rules_push_refuses_an_invalid_file(mtt_router: Cli, config: Path, tmp_path: Path) -> None:
    """An invalid rules file is not pushed: exit 1 and one PATH:LINE line per problem."""
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "version: 1\ntimezone: Europe/Moscow\nmanagers:\n  a:\n    workplace: '1'\n"
        "clients:\n  '+7 921 946-27-61': nobody\nfallback:\n  otherwise: sometimes\n",
        encoding="utf-8",
    )
    result = mtt_router("rules", "push", bad, "--config", config)
    assert result.returncode == 1, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) >= 2
    assert all(line.startswith(f"{bad}:") for line in lines)
    assert mtt_router("rules", "pull", tmp_path / "out.yaml", "--config", config).returncode == 1


def test_rules_push_then_pull_as_processes(config: Path, tmp_path: Path) -> None:
    """push stores version 1 (an unchanged push stores nothing); pull writes it back verbatim."""
    mtt_router = process
    result = mtt_router("rules", "push", EXAMPLE_RULES, "--config", config)
    assert result.returncode == 0, result.stderr
    assert "version 1" in result.stdout
    again = mtt_router("rules", "push", EXAMPLE_RULES, "--config", config)
    assert (again.returncode, "unchanged" in again.stdout) == (0, True)
    forced = mtt_router("rules", "push", EXAMPLE_RULES, "--force", "--config", config)
    assert "version 2" in forced.stdout
    out = tmp_path / "pulled.yaml"
    pulled = mtt_router("rules", "pull", out, "--config", config)
    assert pulled.returncode == 0, pulled.stderr
    assert out.read_text(encoding="utf-8") == EXAMPLE_RULES.read_text(encoding="utf-8")
    to_stdout = mtt_router("rules", "pull", "-", "--config", config)
    assert to_stdout.stdout == EXAMPLE_RULES.read_text(encoding="utf-8")


def test_rules_pull_with_nothing_pushed_fails(
    mtt_router: Cli, config: Path, tmp_path: Path
) -> None:
    """pull before any push: exit 1, no file written."""
    result = mtt_router("rules", "pull", tmp_path / "out.yaml", "--config", config)
    assert result.returncode == 1
    assert "no rules" in result.stderr
    assert not (tmp_path / "out.yaml").exists()


def test_clients_set_get_del(mtt_router: Cli, config: Path) -> None:
    """set, get (table and JSON), count and del; managers are checked against pushed rules."""
    assert mtt_router("rules", "push", EXAMPLE_RULES, "--config", config).returncode == 0
    result = mtt_router("clients", "set", "+7 921 000-00-01", "ivanov", "--config", config)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "79210000001 -> ivanov"
    unknown = mtt_router("clients", "set", "79210000002", "nobody", "--config", config)
    assert unknown.returncode == 1
    assert "unknown manager 'nobody'" in unknown.stderr
    table = mtt_router("clients", "get", "8 921 000 00 01", "--config", config)
    assert table.stdout.split() == ["NUMBER", "MANAGER", "79210000001", "ivanov"]
    as_json = mtt_router("clients", "get", "89210000001", "--json", "--config", config)
    assert json.loads(as_json.stdout) == {"number": "79210000001", "manager": "ivanov"}
    assert mtt_router("clients", "count", "--config", config).stdout.strip() == "1"
    assert mtt_router("clients", "del", "79210000001", "--config", config).returncode == 0
    missing = mtt_router("clients", "get", "79210000001", "--json", "--config", config)
    assert (missing.returncode, json.loads(missing.stdout)["manager"]) == (1, None)
    assert mtt_router("clients", "del", "79210000001", "--config", config).returncode == 1
    bad = mtt_router("clients", "set", "call me", "ivanov", "--config", config)
    assert (bad.returncode, "not a phone number" in bad.stderr) == (1, True)


def test_clients_set_without_pushed_rules_takes_any_manager(mtt_router: Cli, config: Path) -> None:
    """With no rules version in Redis there is nothing to check a manager id against."""
    result = mtt_router("clients", "set", "79210000001", "anyone", "--config", config)
    assert result.returncode == 0, result.stderr


def test_clients_import_reports_bad_rows(mtt_router: Cli, config: Path, tmp_path: Path) -> None:
    """import writes the good rows and prints FILE:LINE for each bad one; exit 1."""
    assert mtt_router("rules", "push", EXAMPLE_RULES, "--config", config).returncode == 0
    csv_file = tmp_path / "crm.csv"
    csv_file.write_text(
        "number,manager\n79210000001,ivanov\nbad,ivanov\n79210000003,ghost\n79210000004,petrova\n",
        encoding="utf-8",
    )
    result = mtt_router("clients", "import", csv_file, "--config", config)
    assert result.returncode == 1
    assert result.stdout.splitlines() == [
        f"{csv_file}:3: not a phone number: 'bad'",
        f"{csv_file}:4: unknown manager 'ghost'",
    ]
    as_json = mtt_router("clients", "import", csv_file, "--json", "--config", config)
    report = json.loads(as_json.stdout)
    assert (report["imported"], report["bad_rows"]) == (2, 2)
    assert mtt_router("clients", "count", "--config", config).stdout.strip() == "2"


def test_storage_commands_need_redis(mtt_router: Cli, tmp_path: Path) -> None:
    """With storage: memory the command is refused as a configuration problem (exit 2)."""
    config = write_config(tmp_path / "memory.yaml", "memory", source="file")
    result = mtt_router("clients", "get", "79210000001", "--config", config)
    assert result.returncode == 2
    assert "storage" in result.stderr


def test_storage_commands_with_redis_down(tmp_path: Path, redis_server: RedisServer) -> None:
    """Redis unreachable: exit 1 with a one-line storage error, quickly."""
    config = write_config(tmp_path / "down.yaml", redis_server.url)
    redis_server.stop()
    started = time.monotonic()
    result = process("clients", "get", "79210000001", "--config", config)
    assert result.returncode == 1
    assert result.stderr.startswith("storage: redis://")
    assert time.monotonic() - started < 20


def test_clients_as_processes(config: Path) -> None:
    """`python -m router clients set|get` work end to end."""
    result = process("clients", "set", "+7 921 000-00-01", "ivanov", "--config", config)
    assert (result.returncode, result.stdout.strip()) == (0, "79210000001 -> ivanov")
    got = process("clients", "get", "89210000001", "--json", "--config", config)
    assert json.loads(got.stdout) == {"number": "79210000001", "manager": "ivanov"}


def test_clients_import_replace(mtt_router: Cli, config: Path, tmp_path: Path) -> None:
    """import --replace swaps the whole map only when every row is valid."""
    mtt_router("clients", "set", "79210000009", "old", "--config", config)
    good = tmp_path / "good.csv"
    good.write_text("79210000001;ivanov\n", encoding="utf-8")
    bad = tmp_path / "bad.csv"
    bad.write_text("79210000002;ivanov\nnope;ivanov\n", encoding="utf-8")
    refused = mtt_router("clients", "import", bad, "--replace", "--config", config)
    assert refused.returncode == 1
    assert "not imported" in refused.stderr
    assert mtt_router("clients", "count", "--json", "--config", config).stdout.split()[-2:] == [
        "1",
        "}",
    ]
    replaced = mtt_router("clients", "import", good, "--replace", "--config", config)
    assert replaced.returncode == 0, replaced.stderr
    assert "replaced the map with 1 rows" in replaced.stderr
    assert mtt_router("clients", "get", "79210000009", "--config", config).returncode == 1


def test_clients_import_of_a_missing_file(mtt_router: Cli, config: Path, tmp_path: Path) -> None:
    """A file that cannot be read: exit 1 with the reason."""
    result = mtt_router("clients", "import", tmp_path / "nope.csv", "--config", config)
    assert result.returncode == 1
    assert "cannot read" in result.stderr


async def _store_raw_rules(redis_url: str, text: str) -> None:
    client = connect(redis_url, role="cli")
    try:
        await client.hset("mtt-router:rules", mapping={"version": "7", "text": text})
    finally:
        await client.aclose()


def test_clients_set_when_the_stored_rules_do_not_load(
    mtt_router: Cli, config: Path, redis_url: str
) -> None:
    """Rules in Redis that this version cannot load block manager checks: exit 1, problems shown."""
    asyncio.run(_store_raw_rules(redis_url, "version: 2\n"))
    result = mtt_router("clients", "set", "79210000001", "ivanov", "--config", config)
    assert result.returncode == 1
    assert "redis rules version 7:" in result.stderr
    pulled = mtt_router("rules", "pull", "-", "--config", config)
    assert (pulled.returncode, pulled.stdout) == (0, "version: 2\n")
    assert "does not load" in pulled.stderr


def test_group_commands_without_an_action_print_usage(mtt_router: Cli) -> None:
    """`mtt-router clients` alone prints its usage and exits 2."""
    result = mtt_router("clients")
    assert result.returncode == 2
    assert "set" in result.stderr


def test_rules_push_and_pull_in_process(mtt_router: Cli, config: Path, tmp_path: Path) -> None:
    """push/pull report unreadable and unwritable files (exit 1) and otherwise succeed."""
    missing = mtt_router("rules", "push", tmp_path / "missing.yaml", "--config", config)
    assert (missing.returncode, "cannot read" in missing.stderr) == (1, True)
    latin1 = tmp_path / "latin1.yaml"
    latin1.write_bytes("name: \xe9\n".encode("latin-1"))
    not_utf8 = mtt_router("rules", "push", latin1, "--config", config)
    assert (not_utf8.returncode, "not UTF-8" in not_utf8.stderr) == (1, True)
    pushed = mtt_router("rules", "push", EXAMPLE_RULES, "--config", config)
    assert (
        pushed.returncode,
        pushed.stdout.startswith(f"{EXAMPLE_RULES}: pushed as version 1"),
    ) == (
        0,
        True,
    )
    unwritable = mtt_router("rules", "pull", tmp_path / "no" / "dir.yaml", "--config", config)
    assert (unwritable.returncode, "cannot write" in unwritable.stderr) == (1, True)
    out = tmp_path / "out.yaml"
    pulled = mtt_router("rules", "pull", out, "--config", config)
    assert (pulled.returncode, pulled.stdout.splitlines()[0]) == (0, f"{out}: wrote version 1")
    assert out.read_text(encoding="utf-8") == EXAMPLE_RULES.read_text(encoding="utf-8")


def test_rules_push_with_a_bad_config(mtt_router: Cli, tmp_path: Path) -> None:
    """An invalid config file: exit 2, the problem named."""
    config = tmp_path / "broken.yaml"
    config.write_text("mtt: {}\n", encoding="utf-8")
    result = mtt_router("rules", "push", EXAMPLE_RULES, "--config", config)
    assert result.returncode == 2
    assert "mtt.client_id" in result.stderr
