"""``mtt-router demo``: the simulator and the daemon route a mix of calls on loopback."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from router.demo import format_table, run_demo
from router.demo_story import demo_rules_text
from router.rules.loader import example_clients_text, example_rules_text, load_rules


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
    # Rules version 2 at work: a conversation on the service line taught the caller's manager,
    # and a call nobody picked up moved on to the deputy, who answered.
    assert report["story"] == {
        "learned": {
            "caller": "79995550001",
            "line": "78005560251",
            "taught_by": "petrova",
            "then_sent_to": "petrova",
            "ok": True,
        },
        "no_answer": {
            "caller": "79219462761",
            "after_s": 1.0,
            "transfers": ["ivanov", "petrova"],
            "answered_by": "petrova",
            "ok": True,
        },
    }


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
    assert result.story is not None
    assert result.story.lines()[0] == (
        "learned:   79995550001 called line 78005560251 and talked to petrova; his next call, "
        "to 74996497803, went to petrova [learned]"
    )
    assert result.story.rerouted_ok


def test_demo_rules_shorten_the_example_timings() -> None:
    """The demo's copy of the example: learn and no_answer in seconds, comments kept; an example
    without those lines is refused rather than silently left slow."""
    text = demo_rules_text(example_rules_text())
    rules = load_rules(text, "demo", clients_text=example_clients_text())
    assert rules.learn is not None
    assert rules.no_answer is not None
    assert (rules.learn.min_talk_s, rules.no_answer.after_s) == (0.2, 1.0)
    assert len(text.splitlines()) == len(example_rules_text().splitlines())
    with pytest.raises(ValueError, match="min_talk_s: 10"):
        demo_rules_text(example_rules_text().replace("min_talk_s: 10 ", "min_talk_s: 15 "))
