"""The monitoring kit as shipped: promtool on the rules, their unit tests and the scrape config;
the alerts' annotations and test coverage; the Grafana dashboard's shape.

Prometheus itself scraping a daemon is tests/test_monitoring_live.py.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from tests.monitoring_support import (
    CONFIG,
    JOB,
    PROMETHEUS_DIR,
    RULE_TESTS,
    RULES_PATH,
    alert_rules,
    dashboard,
    dashboard_targets,
    load_yaml,
    panels,
    promtool,
    referenced_metrics,
)

UNITS = {"cpm", "s", "percentunit", "short", "none", "dtdurations"}
"""Units the dashboard may use: calls a minute, seconds, shares, counts, durations."""
REQUIRED = {
    "mtt_router_decisions_total",  # calls by outcome, live vs shadow, shed
    "mtt_router_decision_seconds_bucket",  # decision latency percentiles
    "mtt_router_answered_total",  # hit rate, answered by
    "mtt_router_api_requests_total",  # API codes by method
    "mtt_router_api_request_seconds_bucket",  # API latency by method
    "mtt_router_token_expiry_timestamp_seconds",
    "mtt_router_rules_version",
    "mtt_router_rejected_total",
    "mtt_router_storage_up",
    "mtt_router_storage_errors_total",
}
"""What the dashboard must show."""


def test_rules_pass_promtool_check() -> None:
    """`promtool check rules` accepts the shipped rules file."""
    checked = promtool("check", "rules", str(RULES_PATH))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in checked.stdout


def test_rules_pass_their_unit_tests() -> None:
    """`promtool test rules` on every file of deploy/prometheus/tests passes."""
    assert len(RULE_TESTS) >= 3
    checked = promtool("test", "rules", *map(str, RULE_TESTS))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout.count("SUCCESS") == len(RULE_TESTS)


def test_every_alert_is_fired_and_kept_quiet_by_a_unit_test() -> None:
    """Each alert of the rules file has a unit test case that expects it to fire, with its
    labels and annotations, and one that expects it quiet."""
    fired: dict[str, int] = defaultdict(int)
    quiet: dict[str, int] = defaultdict(int)
    for path in RULE_TESTS:
        for test in load_yaml(path)["tests"]:
            for case in test.get("alert_rule_test", []):
                expected = case.get("exp_alerts") or []
                (fired if expected else quiet)[case["alertname"]] += 1
                for alert in expected:
                    assert {"summary", "action"} <= alert["exp_annotations"].keys()
    names = sorted(rule["alert"] for rule in alert_rules())
    assert len(names) >= 13
    assert sorted(fired) == names
    assert sorted(quiet) == names


def test_every_alert_says_what_happened_and_what_to_do() -> None:
    """A severity, a summary naming the replica (or the job, for the hit rate) and an action."""
    for rule in alert_rules():
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, rule["alert"]
        annotations = rule["annotations"]
        assert set(annotations) == {"summary", "action"}, rule["alert"]
        assert annotations["summary"].startswith("mtt-router"), rule["alert"]
        assert len(annotations["action"]) > 60, rule["alert"]


def test_the_shipped_scrape_config() -> None:
    """prometheus.yml is valid; its job reads the admin token from a file (Bearer), scrapes two
    replicas, and loads the shipped rules (tests/test_monitoring_live.py runs it for real)."""
    checked = promtool("check", "config", "--syntax-only", str(CONFIG))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    config = load_yaml(CONFIG)
    assert [PROMETHEUS_DIR / path for path in config["rule_files"]] == [RULES_PATH]
    [job] = config["scrape_configs"]
    assert job["job_name"] == JOB
    assert job["authorization"]["type"] == "Bearer"
    assert job["authorization"]["credentials_file"].startswith("/etc/prometheus/")
    [static] = job["static_configs"]
    assert len(static["targets"]) == 2


def _overlap(a: dict[str, int], b: dict[str, int]) -> bool:
    return (
        a["x"] < b["x"] + b["w"]
        and b["x"] < a["x"] + a["w"]
        and a["y"] < b["y"] + b["h"]
        and b["y"] < a["y"] + a["h"]
    )


def test_the_dashboard_shape() -> None:
    """A data source variable that every panel and target uses; a replica variable; unique
    ids; panels inside the 24-column grid and not on top of each other; a unit on every panel
    from :data:`UNITS`; and everything :data:`REQUIRED` shown."""
    board = dashboard()
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert (variables["datasource"]["type"], variables["datasource"]["query"]) == (
        "datasource",
        "prometheus",
    )
    assert variables["instance"]["datasource"]["uid"] == "${datasource}"
    assert variables["instance"]["includeAll"] is True
    every: list[dict[str, Any]] = list(panels(board["panels"]))
    ids = [p["id"] for p in board["panels"] if p["type"] == "row"] + [p["id"] for p in every]
    assert len(ids) == len(set(ids))
    boxes = [p["gridPos"] for p in board["panels"]]
    for i, box in enumerate(boxes):
        assert box["x"] + box["w"] <= 24
        assert not [other for other in boxes[i + 1 :] if _overlap(box, other)], box
    for panel in every:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["fieldConfig"]["defaults"]["unit"] in UNITS, panel["title"]
        assert panel["description"], panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
    shown = {name for _, expr in dashboard_targets() for name in referenced_metrics(expr)}
    assert sorted(REQUIRED - shown) == []
