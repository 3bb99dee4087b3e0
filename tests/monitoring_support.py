"""The operator's monitoring kit (deploy/prometheus, deploy/grafana) as the tests read and run it.

``promtool(...)``        Debian's promtool, run in deploy/prometheus.
``scrape_config(...)``   the shipped prometheus.yml made to scrape one test daemon: its target,
                         the admin token from a file, 1 s intervals, the shipped rules; plus a
                         second job with no token (its scrapes must be refused).
``Prometheus``           the real server (Debian's binary) in a temp dir on a free port, queried
                         through its HTTP API.
``dashboard_targets``    every panel target of the Grafana dashboard; ``fill`` puts in what
                         Grafana would for its variables.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.fixtures.net import free_port
from tests.polling import eventually_sync

ROOT = Path(__file__).resolve().parent.parent
PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
RULES_PATH = PROMETHEUS_DIR / "mtt-router.rules.yml"
CONFIG = PROMETHEUS_DIR / "prometheus.yml"
RULE_TESTS = sorted((PROMETHEUS_DIR / "tests").glob("*.yml"))
DASHBOARD = ROOT / "deploy" / "grafana" / "mtt-router.json"
JOB = "mtt-router"
NO_TOKEN_JOB = "mtt-router-no-token"

GRAFANA_RANGES = {"$__rate_interval": "1m", "$__range": "5m", "$__interval": "15s"}
"""What Grafana puts in for its interval variables (1m: its least $__rate_interval with the
default 15 s scrape interval); the test's data is seconds old, so every window holds all of it."""


def tool(name: str) -> str:
    """The path of a Prometheus binary; fails (never skips) when it is missing."""
    exe = shutil.which(name)
    if exe is None:
        pytest.fail(f"{name} is not installed (scripts/test installs Debian's prometheus package)")
    return exe


def promtool(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """``promtool ARGS`` in deploy/prometheus (so the rule tests' relative paths resolve)."""
    return subprocess.run(
        [tool("promtool"), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=PROMETHEUS_DIR,
        check=False,
    )


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def alert_rules() -> list[dict[str, Any]]:
    """Every alerting rule of the shipped rules file."""
    groups = load_yaml(RULES_PATH)["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def scrape_config(target: str, token_file: Path) -> dict[str, Any]:
    """The shipped prometheus.yml, scraping ``target`` every second with the token in
    ``token_file``, evaluating the shipped rules every second; and a job without the token."""
    config = load_yaml(CONFIG)
    config["global"] = {
        "scrape_interval": "1s",
        "scrape_timeout": "1s",
        "evaluation_interval": "1s",
    }
    config["rule_files"] = [str(PROMETHEUS_DIR / path) for path in config["rule_files"]]
    config.pop("alerting", None)
    [job] = [j for j in config["scrape_configs"] if j["job_name"] == JOB]
    job["authorization"]["credentials_file"] = str(token_file)
    job["static_configs"] = [{"targets": [target]}]
    bare = {key: value for key, value in job.items() if key != "authorization"}
    config["scrape_configs"] = [job, bare | {"job_name": NO_TOKEN_JOB}]
    return dict(config)


class PrometheusError(AssertionError):
    """The API answered an error (a bad expression, a bad parameter)."""


@dataclass
class Prometheus:
    """One Prometheus server process owned by a test module."""

    url: str
    proc: subprocess.Popen[bytes]
    log: Path

    @classmethod
    def start(cls, workdir: Path, config: dict[str, Any]) -> Prometheus:
        """Write ``config`` to ``workdir``, check it with promtool, start, wait until ready."""
        workdir.mkdir(parents=True, exist_ok=True)
        config_path = workdir / "prometheus.yml"
        config_path.write_text(yaml.safe_dump(config), encoding="utf-8")
        checked = promtool("check", "config", str(config_path))
        assert checked.returncode == 0, checked.stdout + checked.stderr
        port = free_port()
        log = workdir / "prometheus.log"
        with log.open("ab") as out:
            proc = subprocess.Popen(
                [
                    tool("prometheus"),
                    f"--config.file={config_path}",
                    f"--storage.tsdb.path={workdir / 'data'}",
                    f"--web.listen-address=127.0.0.1:{port}",
                    "--log.level=warn",
                ],
                stdout=out,
                stderr=out,
            )
        server = cls(f"http://127.0.0.1:{port}", proc, log)
        try:
            eventually_sync(server.ready, "prometheus /-/ready", timeout_s=20.0, interval_s=0.1)
        except AssertionError:
            server.stop()
            raise AssertionError(f"prometheus did not start:\n{server.log_tail()}") from None
        return server

    def ready(self) -> bool:
        assert self.proc.poll() is None, f"prometheus exited:\n{self.log_tail()}"
        try:
            with urllib.request.urlopen(self.url + "/-/ready", timeout=2) as resp:
                return bool(resp.status == 200)
        except OSError:
            return False

    def api(self, path: str, **params: str) -> Any:
        """``GET /api/v1/PATH?params``: its ``data``; a ``PrometheusError`` for an error."""
        query = urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{query}", timeout=10) as resp:
                body = json.load(resp)
        except urllib.error.HTTPError as exc:  # 400/422: a bad expression, with the reason
            body = json.load(exc)
        if body.get("status") != "success":
            raise PrometheusError(f"{path} {params}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query's vector (a scalar becomes one sample without labels)."""
        data = self.api("query", query=expr)
        if data["resultType"] == "scalar":
            return [{"metric": {}, "value": data["result"]}]
        return [dict(sample) for sample in data["result"]]

    def value(self, expr: str) -> float | None:
        """The value of a one-sample query (``None``: no sample)."""
        result = self.query(expr)
        return float(result[0]["value"][1]) if result else None

    def targets(self, job: str) -> list[dict[str, Any]]:
        active = self.api("targets", state="active")["activeTargets"]
        return [t for t in active if t["labels"]["job"] == job]

    def alerts(self) -> dict[str, str]:
        """Active alerts: name -> state (pending or firing)."""
        return {a["labels"]["alertname"]: a["state"] for a in self.api("alerts")["alerts"]}

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)

    def log_tail(self, lines: int = 30) -> str:
        text = self.log.read_text(encoding="utf-8", errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


# -- the dashboard -----------------------------------------------------------------------------


def dashboard() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text(encoding="utf-8")))


def panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every panel, those inside rows too (rows themselves excluded)."""
    for item in items:
        if item["type"] == "row":
            yield from panels(item.get("panels", []))
        else:
            yield item


def dashboard_targets() -> list[tuple[str, str]]:
    """``(panel title and refId, expression)`` of every target of every panel."""
    return [
        (f"{panel['title']} [{target['refId']}]", target["expr"])
        for panel in panels(dashboard()["panels"])
        for target in panel["targets"]
    ]


def variable(name: str) -> dict[str, Any]:
    [found] = [v for v in dashboard()["templating"]["list"] if v["name"] == name]
    return dict(found)


def variable_values(prometheus: Prometheus, definition: str) -> list[str]:
    """What Grafana lists for ``label_values(METRIC, LABEL)``, asked the way it does."""
    match = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", definition)
    assert match is not None, definition
    metric, label = match.groups()
    return list(prometheus.api(f"label/{label}/values", **{"match[]": metric}))


def fill(expr: str, instances: list[str], *, raw: str | None = None) -> str:
    """``expr`` as Grafana sends it with ``instances`` chosen (a regex of the values, escaped
    for a PromQL string) or with ``raw`` (the variable's "All" value, as it is); the interval
    variables as in :data:`GRAFANA_RANGES`."""
    regex = (
        raw
        if raw is not None
        else "|".join(re.escape(value).replace("\\", "\\\\") for value in instances)
    )
    for name, value in {**GRAFANA_RANGES, "${instance}": regex, "$instance": regex}.items():
        expr = expr.replace(name, value)
    assert "$" not in expr, f"a variable the test does not know: {expr}"
    return expr


METRIC_NAME = re.compile(r"\bmtt_router_[a-z_]+")


def referenced_metrics(text: str) -> set[str]:
    """``mtt_router_*`` names in ``text`` (expressions, rules)."""
    return set(METRIC_NAME.findall(text))
