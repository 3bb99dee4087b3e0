"""``mtt-router run`` refuses what it cannot do with one line and the right exit code."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import yaml

from tests.fixtures.net import free_port


def _write_config(tmp_path: Path, listen_port: int, **extra: object) -> Path:
    config = {
        "mtt": {
            "client_id": "id",
            "client_secret": "secret",
            "redirect_uri": f"http://127.0.0.1:{listen_port}/mtt",
            "oauth_url": "http://127.0.0.1:9",
            "api_url": "http://127.0.0.1:9",
        },
        "server": {
            "listen": f"127.0.0.1:{listen_port}",
            "admin_listen": f"127.0.0.1:{free_port()}",
        },
        "tokens_file": str(tmp_path / "tokens.json"),
        **extra,
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _run(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "router", "run", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_invalid_config_exits_2_naming_each_key(tmp_path: Path) -> None:
    """Every problem is one stderr line naming its key; nothing is bound; exit code 2."""
    config = _write_config(tmp_path, free_port(), routing={"decision_budget_ms": "fast"}, x=1)
    proc = _run(config)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert any(line.startswith("routing.decision_budget_ms: ") for line in lines)
    assert "x: unknown key" in lines
    assert "Traceback" not in proc.stderr


def test_port_taken_exits_1_with_one_line(tmp_path: Path) -> None:
    """A public port already in use is reported in one line, exit code 1, no traceback."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        config = _write_config(tmp_path, taken.getsockname()[1])
        proc = _run(config)
    assert proc.returncode == 1
    assert "cannot listen on" in proc.stderr
    assert "Traceback" not in proc.stderr
