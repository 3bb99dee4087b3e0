"""One logging policy: servers write ``log.format`` (JSON) even on a terminal; interactive
commands write readable lines on stderr, coloured only on a terminal."""

from __future__ import annotations

import io
import json
import os
import pty
import select
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog
import yaml

from router.cli import build_parser
from router.logs import setup_cli_logging, setup_daemon_logging
from tests.fixtures.net import free_port
from tests.polling import eventually_sync

ROOT = Path(__file__).resolve().parents[1]
ESC = "\x1b["


class Terminal(io.StringIO):
    """A buffer that says it is a terminal."""

    def isatty(self) -> bool:
        """Always a TTY."""
        return True


@pytest.fixture(autouse=True)
def _reset_logging() -> Iterator[None]:
    """Each test configures structlog onto its own buffer; undo that afterwards."""
    yield
    structlog.reset_defaults()


def test_daemon_logging_is_json_on_a_terminal() -> None:
    """JSON lines on a TTY too, with no colour codes: what production writes."""
    tty = Terminal()
    setup_daemon_logging("json", "info", stream=tty)
    structlog.get_logger("test").info("decided", call_id="c1")
    line = json.loads(tty.getvalue())
    assert (line["event"], line["call_id"], line["level"]) == ("decided", "c1", "info")
    assert ESC not in tty.getvalue()


def test_daemon_console_format_only_when_configured() -> None:
    """``log.format: console`` is the operator's explicit choice: readable, coloured on a TTY."""
    tty = Terminal()
    setup_daemon_logging("console", "info", stream=tty)
    structlog.get_logger("test").info("decided", call_id="c1")
    assert "decided" in tty.getvalue()
    assert ESC in tty.getvalue()


@pytest.mark.parametrize("terminal", [True, False], ids=["tty", "pipe"])
def test_cli_logging_is_readable_on_stderr(monkeypatch: pytest.MonkeyPatch, terminal: bool) -> None:
    """Commands log console lines on stderr whether piped or not; colours only on a TTY."""
    stderr = Terminal() if terminal else io.StringIO()
    monkeypatch.setattr(sys, "stderr", stderr)
    setup_cli_logging("info")
    structlog.get_logger("test").debug("hidden")
    structlog.get_logger("test").warning("storage slow", op="get")
    text = stderr.getvalue()
    assert "storage slow" in text
    assert "hidden" not in text
    assert not text.startswith("{")
    assert (ESC in text) == terminal


def test_simulate_logs_like_the_daemon_by_default() -> None:
    """The simulator is a server: JSON unless ``--log-format console``."""
    parser = build_parser()
    assert parser.parse_args(["simulate"]).log_format == "json"
    assert parser.parse_args(["simulate", "--log-format", "console"]).log_format == "console"


def test_run_logs_json_lines_on_a_pty(tmp_path: Path) -> None:
    """`mtt-router run` with its stderr on a real terminal still writes one JSON object a line."""
    listen = free_port()
    config = {
        "mtt": {
            "client_id": "id",
            "client_secret": "secret",
            "redirect_uri": f"http://127.0.0.1:{listen}/mtt",
            "oauth_url": "http://127.0.0.1:9",
            "api_url": "http://127.0.0.1:9",
        },
        "server": {"listen": f"127.0.0.1:{listen}", "admin_listen": f"127.0.0.1:{free_port()}"},
        "tokens_file": str(tmp_path / "tokens.json"),
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "router", "run", "--config", str(path)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=slave,
        cwd=ROOT,
    )
    os.close(slave)
    seen = b""

    def listening() -> bool:
        nonlocal seen
        if select.select([master], [], [], 0.05)[0]:
            seen += os.read(master, 65536)
        return b'"event":"listening"' in seen

    try:
        eventually_sync(listening, "the daemon's 'listening' line on the terminal", timeout_s=20)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(15)
        os.close(master)
    lines = [line for line in seen.decode().splitlines() if line.strip()]
    assert "listening" in [json.loads(line)["event"] for line in lines]  # every line is JSON
    assert ESC not in seen.decode()
