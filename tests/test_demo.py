"""``mtt-router demo``: the simulator and the daemon route a mix of calls on loopback."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from router.demo import format_table, run_demo


def test_demo_subprocess_routes_every_call_inside_the_window() -> None:
    """The real CLI: every call gets a decision in time; clients reach their own manager."""
    proc = subprocess.run(
        [sys.executable, "-m", "router", "demo", "--calls", "16", "--rate", "16", "--json"],
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    total = report["total"]
    assert total["calls"] == 16
    assert total["missed_window"] == 0
    assert total["personal"] + total["fallback"] + total["to_pbx"] == 16
    assert total["p50_ms"] is not None
    assert total["p99_ms"] >= total["p50_ms"]
    # On the pinned Tuesday the part-timer is off: her clients never reach her.
    assert report["kinds"]["off-schedule client"]["personal"] == 0
    # Known clients reach their own manager (the demo's point), and every one is accounted for.
    known = report["kinds"]["known client"]
    assert known["personal"] >= 1
    assert known["personal"] + known["fallback"] + known["to_pbx"] == known["calls"]


@pytest.mark.timeout(60)
async def test_demo_in_process_table() -> None:
    """The table lists every kind of caller and a total row that adds up."""
    result = await run_demo(calls=10, rate=5.0, out=None, seed=3)
    table = format_table(result)
    for kind in ("known client", "prefix +7812", "off-schedule client", "unknown caller", "total"):
        assert kind in table
    assert result.total.calls == 10
    assert sum(result.total.outcomes.values()) == 10
    assert result.total.outcomes["personal"] >= 1
