"""``mtt-router bench --clients-file N`` as an operator runs it: a small N, short phases.

Counts and shapes only, never timings (the numbers are the benchmark's to report): the big CSV
is loaded, reloaded at least once while calls flow, and every call is decided.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from router.bench.files import CALLER_BASE, manager_id, rules_yaml, write_clients_csv
from router.cli import main
from router.rules.client_table import ClientsRequest, read_clients

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.timeout(120)
def test_the_mode_loads_reloads_and_reports(tmp_path: Path) -> None:
    """20,000 rows, 2 s per phase (in 5 rounds) at 20 calls/s: loaded, reloaded with the CPU it
    took, every call decided, the control rounds (the same load in another process) too; JSON."""
    done = subprocess.run(
        [sys.executable, "-m", "router", "bench", "--clients-file", "20000", "--control",
         "--rate", "20", "--duration", "2", "--warmup", "0.2", "--workplaces", "20",
         "--callers", "100", "--workdir", str(tmp_path), "--json"],
        cwd=ROOT, env={**os.environ, "PYTHONIOENCODING": "utf-8"},
        capture_output=True, text=True, timeout=110, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["settings"]["rows"] == 20_000
    assert report["first_load_s"] > 0
    assert report["reloads"] >= 1
    assert len(report["reload_s"]) == len(report["reload_cpu_s"]) == report["reloads"]
    assert all(cpu > 0 for cpu in report["reload_cpu_s"])
    assert set(report["cpu_pressure"]) == {"steady", "reloading", "control"}
    for phase in (report["steady"], report["during_reloads"], report["control"]):
        assert (phase["sent"], phase["routed"], phase["missed"]) == (40, 40, 0)
    assert report["control"]["in_load"]["sent"] > 0  # calls placed while the other process loaded
    assert set(report["rss_mb"]) == {"small_csv", "loaded", "after_reloads"}
    assert set(report["targets"]) == {"load_s", "p99_ratio", "rss_growth_mb"}
    logged = (tmp_path / "daemon.log").read_text(encoding="utf-8")
    assert '"clients":20000' in logged


def test_the_mode_refuses_bad_flags(capsys: pytest.CaptureFixture[str]) -> None:
    """No rows, or with another mode: exit 2 with a reason."""
    assert main(["bench", "--clients-file", "0"]) == 2
    assert "--clients-file" in capsys.readouterr().err
    assert main(["bench", "--control"]) == 2
    assert "--control goes with --clients-file" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main(["bench", "--clients-file", "10", "--soak"])
    assert info.value.code == 2


def test_the_csv_lists_the_callers_first(tmp_path: Path) -> None:
    """The generated CSV reads back as the rules' clients: the callers first, round-robin."""
    path = tmp_path / "clients.csv"
    write_clients_csv(path, 1000, 7)
    read = read_clients(ClientsRequest(path, None, tuple(manager_id(i) for i in range(7))))
    assert read.problems == []
    assert len(read.table) == 1000
    assert read.table.get(str(CALLER_BASE + 8)) == manager_id(1)
    assert 'clients_file: "clients.csv"' in rules_yaml(("1", "2"), [], "clients.csv")
