"""``mtt-router bench --capture``: the benchmarked daemon captures every notification."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from router.bench import callers, write_daemon_files
from router.cli import main
from router.config import load_config
from router.simulator import generated_workplaces
from tests.test_bench import bench_cli

ROOT = Path(__file__).resolve().parents[1]


def test_capture_flag_turns_log_capture_on_in_the_daemon_config(tmp_path: Path) -> None:
    """The config the bench writes has ``log.capture`` only with ``--capture``."""

    def write(workdir: Path, capture: bool) -> Path:
        files = write_daemon_files(
            workdir,
            sim_url="http://127.0.0.1:9",
            public="127.0.0.1:1",
            admin="127.0.0.1:2",
            workplaces=generated_workplaces(2),
            caller_numbers=callers(3),
            tokens=None,
            log_level="info",
            capture=capture,
        )
        return files.config

    assert load_config(write(tmp_path / "on", True)).log.capture == str(
        tmp_path / "on" / "capture.jsonl"
    )
    assert load_config(write(tmp_path / "off", False)).log.capture == ""


def test_capture_needs_the_daemon_started_here(capsys: pytest.CaptureFixture[str]) -> None:
    """``--capture`` with ``--daemon-url``: exit 2, the other daemon's config is not ours."""
    args = ["--daemon-url", "http://127.0.0.1:1/mtt/events", "--admin-url", "http://127.0.0.1:2"]
    assert main(["bench", "--capture", *args]) == 2
    assert "--capture" in capsys.readouterr().err


@pytest.mark.timeout(30)
def test_bench_with_capture_writes_every_notification(tmp_path: Path) -> None:
    """A short run with --capture: every call routed, each notification a 200 line, file 0600."""
    done = bench_cli(
        *("--rate", "50", "--duration", "1", "--warmup", "0", "--workplaces", "10"),
        *("--callers", "50", "--capture", "--workdir", str(tmp_path), "--json"),
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["daemon"]["capture"] is True
    run = report["runs"][0]
    assert run["routed"] == run["sent"] == 50
    path = tmp_path / "capture.jsonl"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    tryings = [line for line in lines if '"state":"trying"' in line["body"].replace(" ", "")]
    assert len(tryings) == run["sent"]
    assert {line["status"] for line in lines} == {200}
