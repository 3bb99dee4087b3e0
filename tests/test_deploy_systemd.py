"""deploy/systemd: the unit passes systemd's own checks, and the daemon runs under what of its
sandbox a process can apply to itself without systemd.

No systemd runs here (nor in CI), but ``systemd-analyze verify`` and ``security --offline`` read
a unit file alone, and ``systemd-sysusers --root`` creates users in a directory tree. Each
check runs on a copy of the unit whose ``ExecStart`` is this environment's ``mtt-router`` (verify
wants the binary to exist). scripts/test apt-installs systemd when ``systemd-analyze`` is missing.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
import yaml

from router.config import parse_config
from router.errors import ConfigError
from router.simulator import SimConfig, Simulator
from tests.fixtures.daemon import (
    IVANOV_CLIENT,
    IVANOV_WP,
    NUMBER,
    RULES,
    daemon_sim_config,
    finished,
    routed_to,
    store_tokens,
)
from tests.fixtures.net import free_port
from tests.polling import eventually

ROOT = Path(__file__).resolve().parent.parent
SYSTEMD = ROOT / "deploy" / "systemd"
UNIT = SYSTEMD / "mtt-router.service"
MTT_ROUTER = Path(sys.executable).with_name("mtt-router")
INSTALLED_EXEC = "ExecStart=/opt/mtt-router/venv/bin/mtt-router "

DRAIN_SLACK_S = 0.5
"""What the engine's drain adds to the decision budget (router/services.py)."""
RELOAD_WAIT_S = 2.0
"""How long a stop waits for a rules reload in flight (router/daemon.py)."""

SANDBOX = """\
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
PR_SET_NO_NEW_PRIVS, PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 38, 65, 1
for option, value in ((PR_SET_NO_NEW_PRIVS, 1), (PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN)):
    if libc.prctl(option, value, 0, 0, 0) != 0:
        errno = ctypes.get_errno()
        print(f"prctl({option}) failed: errno {errno}", file=sys.stderr)
        sys.exit(77 if option == PR_SET_MDWE and errno == 22 else 1)  # EINVAL: before Linux 6.3
os.umask(0o077)
os.execv(sys.argv[1], sys.argv[1:])
"""
"""Run argv[1:] as the unit would, as far as a process can do it to itself: NoNewPrivileges,
MemoryDenyWriteExecute (the kernel's PR_SET_MDWE, Linux 6.3+, kept across execve) and UMask.
Exit code :data:`NO_MDWE` when the kernel is older."""
NO_MDWE = 77


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed (scripts/test apt-installs systemd)")
    return path


def directives(text: str) -> dict[str, list[str]]:
    """``Key=value`` lines of a unit (comments skipped), every value of a repeated key."""
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line and not line.startswith(("#", ";", "[")) and "=" in line:
            key, _, value = line.partition("=")
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def unit_copy(tmp_path: Path, text: str | None = None) -> Path:
    """The unit (or ``text``) as tmp_path/mtt-router.service, run from this environment."""
    text = UNIT.read_text(encoding="utf-8") if text is None else text
    assert text.count(INSTALLED_EXEC) == 1
    path = tmp_path / UNIT.name
    path.write_text(text.replace(INSTALLED_EXEC, f"ExecStart={MTT_ROUTER} "), encoding="utf-8")
    return path


def verify(path: Path) -> tuple[int, list[str]]:
    """``systemd-analyze verify``: its exit code and every line it prints about our unit."""
    done = subprocess.run(
        [tool("systemd-analyze"), "verify", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    lines = (done.stdout + done.stderr).splitlines()
    return done.returncode, [line for line in lines if path.name in line]


def test_the_unit_verifies_without_a_warning(tmp_path: Path) -> None:
    code, about_ours = verify(unit_copy(tmp_path))
    assert about_ours == []
    assert code == 0


@pytest.mark.parametrize(
    "edit",
    ["ProtectSytem=strict", "MemoryDenyWriteExecute=maybe", "RestrictAddressFamilies=AF_BOGUS"],
)
def test_verify_reports_a_bad_line(tmp_path: Path, edit: str) -> None:
    """The check above can fail: a misspelled key or a bad value in our unit is reported."""
    text = UNIT.read_text(encoding="utf-8").replace("[Install]", f"{edit}\n\n[Install]")
    _, about_ours = verify(unit_copy(tmp_path, text))
    assert about_ours != []


def exposure(path: Path) -> tuple[int, str]:
    """``systemd-analyze security --offline`` with a threshold of 1.5: exit code, last line."""
    done = subprocess.run(
        [tool("systemd-analyze"), "security", "--offline=yes", "--threshold=15", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    lines = (done.stdout + done.stderr).strip().splitlines()
    return done.returncode, lines[-1] if lines else ""


def test_the_sandbox_scores_ok(tmp_path: Path) -> None:
    """systemd's own rating of the sandbox: exposure 1.5 or less of 10 ("OK")."""
    code, verdict = exposure(unit_copy(tmp_path))
    assert "OK" in verdict
    assert code == 0


def test_the_score_needs_the_hardening(tmp_path: Path) -> None:
    """The rating above can fail: the unit without its hardening block rates worse than 1.5."""
    text = UNIT.read_text(encoding="utf-8")
    start, end = text.index("# Hardening."), text.index("[Install]")
    code, verdict = exposure(unit_copy(tmp_path, text[:start] + text[end:]))
    assert "OK" not in verdict
    assert code != 0


def test_sysusers_creates_the_units_user(tmp_path: Path) -> None:
    """deploy/systemd/mtt-router.sysusers makes the User=/Group= of the unit: a system account
    without a login shell whose home is the StateDirectory."""
    (tmp_path / "etc").mkdir()
    subprocess.run(
        [tool("systemd-sysusers"), f"--root={tmp_path}", str(SYSTEMD / "mtt-router.sysusers")],
        capture_output=True,
        timeout=30,
        check=True,
    )
    passwd = (tmp_path / "etc" / "passwd").read_text(encoding="utf-8").splitlines()
    users = {line.split(":")[0]: line.split(":") for line in passwd}
    groups = {line.split(":")[0] for line in (tmp_path / "etc" / "group").read_text().splitlines()}
    unit = directives(UNIT.read_text(encoding="utf-8"))
    user = users[unit["User"][0]]
    assert unit["Group"][0] in groups
    assert user[5] == "/var/lib/" + unit["StateDirectory"][0] == unit["WorkingDirectory"][0]
    assert user[6].endswith("nologin")
    assert int(user[2]) < 1000  # a system account


def test_the_stop_timeout_outlasts_the_drain() -> None:
    """TimeoutStopSec covers the longest drain the config allows (the largest decision budget
    plus the drain's slack) and a rules reload in flight; waiting re-routes are dropped, not
    waited for, so no_answer.after_s does not count."""
    base = {"mtt": {"client_id": "x", "client_secret": "y", "redirect_uri": "https://h/mtt"}}

    def accepts(budget_ms: int) -> bool:
        try:
            parse_config(base | {"routing": {"decision_budget_ms": budget_ms}}, env={})
        except ConfigError:
            return False
        return True

    largest = 5000
    assert accepts(largest)
    assert not accepts(largest + 1)
    timeout = directives(UNIT.read_text(encoding="utf-8"))["TimeoutStopSec"][0]
    assert re.fullmatch(r"\d+s?", timeout)
    assert int(timeout.rstrip("s")) > largest / 1000 + DRAIN_SLACK_S + RELOAD_WAIT_S


def test_the_env_example_names_the_secrets_and_refuses_to_start_empty() -> None:
    """deploy/systemd/env.example holds the variables config.example.yaml names; left as it is
    the config is refused (exit 2), filled in it is accepted."""
    env = dict(
        line.split("=", 1)
        for line in (SYSTEMD / "env.example").read_text(encoding="utf-8").splitlines()
        if line and not line.startswith("#")
    )
    assert set(env) == {"MTT_CLIENT_SECRET", "MTT_ROUTER_ADMIN_TOKEN"}
    example = (ROOT / "config.example.yaml").read_text(encoding="utf-8")
    config = yaml.safe_load(example.replace("# admin_token:", "admin_token:"))
    named = {var for section in config.values() if isinstance(section, dict)
             for value in section.values() if isinstance(value, str)
             for var in re.findall(r"\$\{(\w+)\}", value)}  # fmt: skip
    assert named == set(env)
    with pytest.raises(ConfigError) as refused:
        parse_config(config, env=env)
    assert "mtt.client_secret" in str(refused.value)
    assert "server.admin_token" in str(refused.value)
    filled = {"MTT_CLIENT_SECRET": "secret", "MTT_ROUTER_ADMIN_TOKEN": "t" * 24}
    assert parse_config(config, env=filled).server.admin_token == "t" * 24


def test_the_sandbox_refuses_writable_executable_memory() -> None:
    """The wrapper really applies MemoryDenyWriteExecute (so the daemon test below means it)."""
    probe = (
        "import mmap\n"
        "try:\n"
        "    mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)\n"
        "except PermissionError:\n"
        "    print('refused')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", SANDBOX, sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if done.returncode == NO_MDWE:
        pytest.skip("this kernel has no PR_SET_MDWE (Linux 6.3+)")
    assert (done.returncode, done.stdout) == (0, "refused\n"), done.stderr


def sandboxed(
    argv: list[str], cwd: Path, env: dict[str, str], log: Path
) -> subprocess.Popen[bytes]:
    """``argv`` under :data:`SANDBOX` in ``cwd``, ``env`` added, its output to ``log``."""
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-c", SANDBOX, *argv],
            cwd=cwd,
            env={**os.environ, **env},
            stdout=out,
            stderr=out,
        )


@pytest.fixture
def sim_config() -> SimConfig:
    return daemon_sim_config()


async def test_the_daemon_runs_and_stops_in_the_sandbox(sim: Simulator, tmp_path: Path) -> None:
    """`mtt-router run` as ExecStart starts it, under NoNewPrivileges, MemoryDenyWriteExecute
    and UMask, in its state directory with the secret from the environment: ready, a parked
    call transferred, and on SIGTERM it exits 0 within TimeoutStopSec."""
    state = tmp_path / "state"
    state.mkdir()
    public, admin = free_port(), free_port()
    (tmp_path / "rules.yaml").write_text(RULES, encoding="utf-8")
    config = {
        "mtt": {
            "client_id": sim.config.client_id,
            "client_secret": "${MTT_CLIENT_SECRET}",
            "redirect_uri": f"http://127.0.0.1:{public}/mtt",
            "oauth_url": sim.url,
            "api_url": sim.url,
        },
        "server": {"listen": f"127.0.0.1:{public}", "admin_listen": f"127.0.0.1:{admin}"},
        "rules": {"source": "file", "path": str(tmp_path / "rules.yaml")},
        "routing": {"decision_budget_ms": 700},
    }
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(config), encoding="utf-8")
    await store_tokens(sim, state / "tokens.json")  # tokens_file's default, in WorkingDirectory
    unit = directives(UNIT.read_text(encoding="utf-8"))
    stop_s = float(unit["TimeoutStopSec"][0].rstrip("s"))
    # ExecStart's command line, with this environment's binary and the test's config.
    argv = shlex.split(unit["ExecStart"][0])
    assert argv[1:] == ["run", "--config", "/etc/mtt-router/config.yaml"]
    argv = [str(MTT_ROUTER), *argv[1:-1], str(config_path)]
    log = tmp_path / "daemon.log"
    proc = sandboxed(argv, state, {"MTT_CLIENT_SECRET": sim.config.client_secret}, log)
    try:
        async with aiohttp.ClientSession() as http:

            async def ready() -> bool:
                if proc.poll() == NO_MDWE:
                    pytest.skip("this kernel has no PR_SET_MDWE (Linux 6.3+)")
                assert proc.poll() is None, log.read_text()
                try:
                    async with http.get(f"http://127.0.0.1:{admin}/readyz") as resp:
                        return resp.status == 200
                except aiohttp.ClientConnectionError:
                    return False

            await eventually(ready, "/readyz answers 200", timeout_s=20)
        sim.webhook_url = f"http://127.0.0.1:{public}/mtt/events"
        call = await sim.place_call(IVANOV_CLIENT, NUMBER)
        await finished(call)
        assert routed_to(call) == IVANOV_WP, log.read_text()
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(proc.wait, stop_s)
        assert code == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    levels = [json.loads(line).get("level") for line in log.read_text().splitlines()]
    assert "error" not in levels, log.read_text()
