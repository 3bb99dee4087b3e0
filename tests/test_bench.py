"""``mtt-router bench``: a real daemon process under simulated load, measured as MTT sees it.

Correctness only (every call routed, the report's shape): timings depend on the machine.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from router import runtime
from router.bench import callers, rules_yaml
from router.bench.load import RunResult, percentile
from router.bench.report import medians, table
from router.cli import main
from router.rules.loader import load_rules
from router.simulator import generated_workplaces

ROOT = Path(__file__).resolve().parents[1]


def bench_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """``python -m router bench ARGS`` in a subprocess, as an operator runs it."""
    return subprocess.run(
        [sys.executable, "-m", "router", "bench", *args],
        cwd=ROOT,
        env={**os.environ, "PYTHONIOENCODING": "utf-8"},
        capture_output=True,
        text=True,
        timeout=28,
        check=False,
    )


RUN_KEYS = {
    "rate",
    "achieved_rate",
    "sent",
    "routed",
    "transferred",
    "terminated",
    "missed",
    "lifecycle_complete",
    "webhook_errors",
    "p50_ms",
    "p90_ms",
    "p99_ms",
    "max_ms",
    "daemon_cpu_s",
    "daemon_cpu_ms_per_call",
    "daemon_rss_mb",
    "sim_cpu_ms_per_call",
    "generator_lag_ms_max",
    "window_s",
    "load1",
    "in_window_pct",
    "redis_cpu_ms_per_call",
    "redis_cmds_per_call",
    "redis_trips_per_call",
    "redis_commands",
}


@pytest.mark.timeout(30)
def test_bench_routes_every_call_and_reports_json(tmp_path: Path) -> None:
    """50 calls/s for 2 s against a daemon subprocess: all routed, full lifecycle, JSON report."""
    done = bench_cli(
        *("--rate", "50", "--duration", "2", "--repeat", "2", "--warmup", "0.2"),
        *("--workplaces", "20", "--callers", "100", "--workdir", str(tmp_path), "--json"),
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert set(report) == {"settings", "daemon", "runs", "median"}
    assert report["daemon"]["mode"] == "subprocess"
    assert len(report["runs"]) == 2
    for run in [*report["runs"], report["median"]]:
        assert set(run) == RUN_KEYS
        assert run["sent"] == 100
        assert run["routed"] == run["sent"]
        assert run["missed"] == 0
        assert run["transferred"] + run["terminated"] == run["routed"]
        assert run["lifecycle_complete"] == run["sent"]
        assert run["webhook_errors"] == 0
        assert 0 < run["p50_ms"] <= run["p90_ms"] <= run["p99_ms"] <= run["max_ms"]
        assert run["daemon_cpu_s"] is not None
        assert run["daemon_rss_mb"] > 0
        assert run["in_window_pct"] == 100
        assert run["redis_cmds_per_call"] is None  # memory storage: no Redis columns
    # The daemon it started logged one decision line per call (info level, as in production).
    decisions = [
        line for line in (tmp_path / "daemon.log").read_text().splitlines() if '"decision"' in line
    ]
    assert len(decisions) >= 200


@pytest.mark.timeout(30)
def test_bench_on_a_throwaway_redis_reports_what_redis_spent(tmp_path: Path) -> None:
    """``--storage redis``: the bench starts its own redis-server, the daemon keeps its state
    there, and the table adds Redis' CPU, commands and round trips per call (every call decided
    costs Redis at least its claim); the server is stopped afterwards."""
    done = bench_cli(
        *("--rate", "50", "--duration", "2", "--warmup", "0.2", "--storage", "redis"),
        *("--workplaces", "20", "--callers", "100", "--workdir", str(tmp_path)),
    )
    assert done.returncode == 0, done.stderr
    header, row = done.stdout.splitlines()
    titles = ["in window %", "cpu ms/call", "redis cpu ms/call", "redis cmds/call"]
    titles += ["redis trips/call", "p99 ms"]
    for title in titles:
        assert f"  {title}" in header
    # Right-aligned columns: each value ends where its title ends.
    cell = {t: row[: header.index(t) + len(t)].split()[-1] for t in titles}
    assert cell["in window %"] == "100"
    assert float(cell["redis cmds/call"]) >= 1  # the claim, at least
    assert float(cell["redis trips/call"]) >= 1
    assert float(cell["redis cpu ms/call"]) > 0
    assert 'storage: "redis://127.0.0.1:' in (tmp_path / "config.yaml").read_text()
    assert "ready to exit" in (tmp_path / "redis" / "redis.log").read_text()


def test_bench_refuses_bad_flags(capsys: pytest.CaptureFixture[str]) -> None:
    """Bad numbers and a daemon URL without its admin URL: exit 2 with a reason."""
    assert main(["bench", "--rate", "0"]) == 2
    assert "--rate" in capsys.readouterr().err
    assert main(["bench", "--daemon-url", "http://127.0.0.1:1/mtt/events"]) == 2
    assert "--admin-url" in capsys.readouterr().err
    assert main(["bench", "--storage", "mongodb://x"]) == 2
    assert "--storage" in capsys.readouterr().err
    external = ["--daemon-url", "http://127.0.0.1:1/mtt/events", "--admin-url", "http://x:1"]
    assert main(["bench", *external, "--storage", "redis"]) == 2
    assert "that daemon's Redis URL" in capsys.readouterr().err


def test_generated_rules_are_valid_and_spread_callers() -> None:
    """One always-available manager per workplace; callers round-robin over them."""
    workplaces = generated_workplaces(3)
    numbers = callers(7)
    rules = load_rules(rules_yaml(workplaces, numbers), "bench.yaml")
    assert [m.workplace for m in rules.managers.values()] == list(workplaces)
    assert all(m.schedule is None for m in rules.managers.values())
    assert rules.clients[numbers[4]] == "m00001"


def test_percentiles_medians_and_table() -> None:
    """Nearest-rank percentiles; medians per field skipping missing values; a table per row."""
    values = [float(v) for v in range(1, 101)]
    assert (percentile(values, 50), percentile(values, 99), percentile([], 50)) == (50, 99, None)
    assert percentile([3.0], 99) == 3.0
    text = table([("#1", {"rate": 10.0, "p99_ms": None, "sent": 5})])
    assert text.splitlines()[1].split()[:3] == ["#1", "10", "-"]
    assert "redis" not in text  # Redis columns only when some row has them
    assert "redis cmds/call" in table([("#1", {"redis_cmds_per_call": 2.5})])
    ones: dict[str, Any] = dict.fromkeys(RUN_KEYS - {"redis_commands"}, 1)
    base = RunResult(**ones)
    runs = [
        dataclasses.replace(base, p99_ms=p99, daemon_rss_mb=rss, redis_commands=cmds)
        for p99, rss, cmds in (
            (3.0, None, {"set": 1.0}),
            (30.0, 50.0, {"set": 3.0, "hget": 1.0}),
            (4.0, 70.0, None),
        )
    ]
    summary = medians(runs)
    assert (summary["p99_ms"], summary["daemon_rss_mb"], summary["sent"]) == (4.0, 60.0, 1.0)
    assert summary["redis_commands"] == {"hget": 0.5, "set": 2.0}  # per command


def test_loop_choice_follows_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """MTT_ROUTER_LOOP=asyncio forces the standard loop; auto takes uvloop when installed."""
    monkeypatch.setenv(runtime.LOOP_ENV, "asyncio")
    assert runtime.loop_name() == "asyncio"
    assert runtime.run(_answer()) == 42
    monkeypatch.setenv(runtime.LOOP_ENV, "auto")
    expected = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    assert runtime.loop_name() == expected
    assert runtime.run(_answer()) == 42


async def _answer() -> int:
    return 42
