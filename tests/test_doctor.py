"""``mtt-router doctor`` against the MTT simulator over real HTTP: a healthy setup, then each broken
one giving its own fail line.

The command runs through :func:`router.cli.main` in a worker thread (it calls ``asyncio.run``)
while the simulator (and the daemon, when one is needed) serve on this test's loop; once it runs
as a real process. Checks that need a state the loader refuses or a skewed clock are called
directly on a :class:`router.doctor_context.DoctorContext`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import shutil
import ssl
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web

from router.cli import main
from router.config import HostPort, ServerConfig, load_config
from router.doctor import check_admin, check_clock
from router.doctor_context import open_doctor
from router.logs import setup_cli_logging
from router.mtt.tokens import TokenSet
from router.simulator import SimConfig, Simulator
from router.state.memory import FileTokenStore
from tests.fixtures.daemon import (
    IVANOV_WP,
    NUMBER,
    OTHER_NUMBER,
    RULES,
    RunningDaemon,
    StartDaemon,
    daemon_sim_config,
    store_tokens,
)
from tests.fixtures.net import free_port
from tests.mtt_support import expired_set, issued_set

ROOT = Path(__file__).resolve().parent.parent
NAMES = [
    "config",
    "public_url",
    "tokens",
    "mtt_api",
    "clock",
    "numbers",
    "rules",
    "workplaces",
    "storage",
    "admin",
]
UNLISTED_NUMBER = "79990000000"
GHOST_WP = "883140000000001"

Checks = dict[str, dict[str, str]]


@pytest.fixture(autouse=True)
def _logs_to_stderr() -> None:
    """The in-process daemon logs through structlog: keep stdout for the doctor's report."""
    setup_cli_logging("warning")


@pytest.fixture
def sim_config() -> SimConfig:
    """The daemon tests' simulator: 1 s parking window, workplaces answering at once."""
    return daemon_sim_config()


def write_config(
    tmp_path: Path,
    sim: Simulator,
    *,
    redirect_uri: str | None = None,
    listen: str | None = None,
    rules: str = RULES,
    storage: str = "memory",
    routing: dict[str, Any] | None = None,
) -> Path:
    """A config file on the simulator; by default its public URL is a port nobody listens on."""
    port = free_port()
    rules_path = tmp_path / "rules.yaml"
    rules_path.write_text(rules, encoding="utf-8")
    data = {
        "mtt": {
            "client_id": sim.config.client_id,
            "client_secret": sim.config.client_secret,
            "redirect_uri": redirect_uri or f"http://127.0.0.1:{port}/mtt",
            "oauth_url": sim.url,
            "api_url": sim.url,
        },
        "server": {"listen": listen or f"127.0.0.1:{port}", "admin_listen": "127.0.0.1:0"},
        "storage": storage,
        "tokens_file": str(tmp_path / "tokens.json"),
        "rules": {"source": "file", "path": str(rules_path)},
        "routing": routing or {},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def config_of(daemon: RunningDaemon, tmp_path: Path) -> Path:
    """A config file for the doctor describing ``daemon``: its public URL, tokens and rules."""
    return write_config(
        tmp_path,
        daemon.sim,
        redirect_uri=daemon.config.mtt.redirect_uri,
        listen=str(daemon.config.server.listen),
        rules=daemon.rules_path.read_text(encoding="utf-8"),
        routing={"park": [NUMBER]},
    )


async def doctor(config_path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, Checks]:
    """Run `doctor --json` in a thread: its exit code and its checks by name (order checked)."""
    code = await asyncio.to_thread(main, ["doctor", "--json", "--config", str(config_path)])
    listed = json.loads(capsys.readouterr().out)
    assert [c["name"] for c in listed] == NAMES
    return code, {c["name"]: c for c in listed}


async def stored(path: Path) -> TokenSet:
    """The token set in the tokens file."""
    tokens = await FileTokenStore(path).load()
    assert tokens is not None
    return tokens


async def test_healthy_setup_every_line_ok(
    start_daemon: StartDaemon, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A running daemon, its tokens and rules MTT agrees with: exit 0 and every check ok."""
    daemon = await start_daemon(park=[NUMBER])
    code, checks = await doctor(config_of(daemon, tmp_path), capsys)
    assert {name: c["status"] for name, c in checks.items()} == dict.fromkeys(NAMES, "ok"), checks
    assert code == 0
    assert "answered 200 (mtt-router's page)" in checks["public_url"]["detail"]
    assert "access token valid until" in checks["tokens"]["detail"]
    assert "refreshed" not in checks["tokens"]["detail"]  # a live access token is not refreshed
    assert f"routing.park parks {NUMBER}" in checks["numbers"]["detail"]
    assert OTHER_NUMBER in checks["numbers"]["detail"]
    assert "all 3 managers' workplaces exist" in checks["workplaces"]["detail"]
    assert "within" in checks["clock"]["detail"]
    assert daemon.sim.tokens.grants["refresh_token"] == 0


async def test_real_cli_process_prints_the_table(start_daemon: StartDaemon, tmp_path: Path) -> None:
    """`python -m router doctor` as a process: one table row per check, all ok, exit 0, no token."""
    daemon = await start_daemon(park=[NUMBER])
    config_path = config_of(daemon, tmp_path)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "router",
        "doctor",
        "--config",
        str(config_path),
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    text = out.decode()
    assert proc.returncode == 0, text + err.decode()
    lines = text.splitlines()
    assert lines[0].split() == ["CHECK", "STATUS", "FOUND", "TO", "DO"]
    assert [line.split()[:2] for line in lines[1:-1]] == [[name, "ok"] for name in NAMES]
    assert lines[-1] == f"{len(NAMES)} ok, 0 warn, 0 fail"
    tokens = await stored(daemon.tokens_path)
    for secret in (tokens.access_token, tokens.refresh_token, daemon.sim.config.client_secret):
        assert secret not in text
        assert secret not in err.decode()


async def test_rules_workplace_mtt_does_not_list(
    sim: Simulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A manager at a workplace MTT does not list: a fail naming the manager and the workplace."""
    rules = RULES.replace(IVANOV_WP, GHOST_WP)
    path = write_config(tmp_path, sim, rules=rules)
    await store_tokens(sim, tmp_path / "tokens.json")
    code, checks = await doctor(path, capsys)
    assert code == 1
    assert checks["rules"]["status"] == "ok"
    assert checks["workplaces"]["status"] == "fail"
    assert f"manager ivanov: workplace {GHOST_WP}" in checks["workplaces"]["detail"]
    assert "pbx workplaces" in checks["workplaces"]["fix"]


async def test_rules_that_do_not_load(
    sim: Simulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Rules with a problem: the rules line fails with PATH:LINE, workplaces is not checked."""
    path = write_config(tmp_path, sim, rules=RULES.replace("version: 1", "version: 99"))
    await store_tokens(sim, tmp_path / "tokens.json")
    code, checks = await doctor(path, capsys)
    assert code == 1
    assert checks["rules"]["status"] == "fail"
    assert f"{tmp_path / 'rules.yaml'}:1:" in checks["rules"]["detail"]
    assert checks["workplaces"]["status"] == "warn"


async def test_no_tokens(
    sim: Simulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Never logged in: tokens fail with `auth login`; the checks needing a token say so."""
    path = write_config(tmp_path, sim)
    code, checks = await doctor(path, capsys)
    assert code == 1
    assert checks["tokens"]["status"] == "fail"
    assert "no tokens in" in checks["tokens"]["detail"]
    assert "mtt-router auth login --config" in checks["tokens"]["fix"]
    for name in ("mtt_api", "numbers", "workplaces"):
        assert checks[name]["status"] == "warn", checks[name]
    assert checks["clock"]["status"] == "ok"  # a 401 carries MTT's Date too


async def test_refresh_token_mtt_refuses(
    sim: Simulator,
    sim_http: aiohttp.ClientSession,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """MTT dropped the tokens (control API): the access token is refused, the refresh too."""
    path = write_config(tmp_path, sim)
    await store_tokens(sim, tmp_path / "tokens.json")
    revoke = {"revoke_access_tokens": True, "revoke_refresh_tokens": True}
    async with sim_http.post(f"{sim.url}/_sim/faults", json=revoke) as resp:
        assert resp.status == 200, await resp.text()
    code, checks = await doctor(path, capsys)
    assert code == 1
    assert checks["tokens"]["status"] == "fail"
    assert "MTT refused the refresh token (invalid_grant)" in checks["tokens"]["detail"]
    assert "auth login" in checks["tokens"]["fix"]


async def test_expired_access_token_is_refreshed_and_saved(
    sim: Simulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An expired access token with a good refresh token: one refresh, saved, and the line is ok."""
    path = write_config(tmp_path, sim)
    tokens_path = tmp_path / "tokens.json"
    await FileTokenStore(tokens_path).save(expired_set(sim), expected_version=None)
    code, checks = await doctor(path, capsys)
    assert checks["tokens"]["status"] == "ok", checks["tokens"]
    assert "refreshed now" in checks["tokens"]["detail"]
    assert checks["mtt_api"]["status"] == "ok"
    assert sim.tokens.grants["refresh_token"] == 1
    assert (await stored(tokens_path)).version == 2
    assert code == 1  # nothing answers the public URL in this setup


async def test_tokens_past_their_lifetime(
    sim: Simulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Access and refresh tokens both expired: a fail asking for a login, and no refresh sent."""
    path = write_config(tmp_path, sim)
    old = issued_set(sim, age_s=4 * 24 * 3600.0)
    await FileTokenStore(tmp_path / "tokens.json").save(old, expected_version=None)
    code, checks = await doctor(path, capsys)
    assert code == 1
    assert checks["tokens"]["status"] == "fail"
    assert "the refresh token expired at" in checks["tokens"]["detail"]
    assert "auth login" in checks["tokens"]["fix"]
    assert sim.tokens.grants["refresh_token"] == 0


async def test_public_url_that_does_not_answer(
    sim: Simulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Nothing listens behind redirect_uri: a fail that says to start the daemon."""
    path = write_config(tmp_path, sim)
    await store_tokens(sim, tmp_path / "tokens.json")
    code, checks = await doctor(path, capsys)
    assert code == 1
    public = checks["public_url"]
    assert public["status"] == "fail"
    assert "cannot connect" in public["detail"]
    assert "the daemon must run" in public["fix"]
    assert "/mtt" not in public["detail"]  # the path may carry a secret segment


@pytest.fixture
def self_signed(tmp_path: Path) -> ssl.SSLContext:
    """A server TLS context with a fresh self-signed certificate for 127.0.0.1 (openssl)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-nodes", "-days", "1"),
            *("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"),
            *("-keyout", str(key), "-out", str(cert)),
            *("-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"),
        ],
        check=True,
        capture_output=True,
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context


@pytest.fixture
async def untrusted_https(self_signed: ssl.SSLContext) -> AsyncIterator[str]:
    """An https URL answering mtt-router's page, behind a certificate no system trusts."""

    async def page(request: web.Request) -> web.Response:
        return web.Response(text="mtt-router")

    app = web.Application()
    app.router.add_get("/mtt", page)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=self_signed)
    await site.start()
    try:
        yield f"https://127.0.0.1:{runner.addresses[0][1]}/mtt"
    finally:
        await runner.cleanup()


async def test_public_url_with_untrusted_certificate(
    sim: Simulator, untrusted_https: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A self-signed certificate at the public URL: a fail that says the TLS cert is not trusted."""
    path = write_config(tmp_path, sim, redirect_uri=untrusted_https)
    await store_tokens(sim, tmp_path / "tokens.json")
    code, checks = await doctor(path, capsys)
    assert code == 1
    public = checks["public_url"]
    assert public["status"] == "fail"
    assert "TLS certificate not trusted by this system" in public["detail"]
    assert re.search(r"self.signed", public["detail"])  # OpenSSL 1.1 and 3 spell it differently
    assert "public CA" in public["fix"]


@pytest.mark.parametrize(
    ("host", "token", "status"),
    [
        ("0.0.0.0", None, "fail"),
        ("10.1.2.3", None, "fail"),
        ("0.0.0.0", "a-long-enough-admin-token", "ok"),
        ("127.0.0.1", None, "ok"),
        ("::1", None, "ok"),
    ],
)
async def test_admin_listener(
    sim: Simulator, tmp_path: Path, host: str, token: str | None, status: str
) -> None:
    """A non-loopback admin listener fails without server.admin_token, passes with one."""
    path = write_config(tmp_path, sim)
    # Built past the loader, which may refuse such a listener itself: the check stays a guard.
    base = load_config(path)
    server = ServerConfig(listen=base.server.listen, admin_listen=HostPort(host, 9100))
    config = dataclasses.replace(base, server=dataclasses.replace(server, admin_token=token))
    async with open_doctor(config, str(path)) as ctx:
        check = await check_admin(ctx)
    assert check.status == status, check
    if status == "fail":
        assert "server.admin_token" in check.detail
        assert "admin_token" in check.fix
    assert token is None or token not in check.detail


async def test_storage_down(
    sim: Simulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Redis nobody listens on: storage fails, the tokens it keeps cannot be read; others run."""
    path = write_config(tmp_path, sim, storage=f"redis://127.0.0.1:{free_port()}/0")
    code, checks = await doctor(path, capsys)
    assert code == 1
    assert checks["storage"]["status"] == "fail"
    assert "does not answer" in checks["storage"]["detail"]
    assert checks["tokens"]["status"] == "fail"
    assert "cannot read the token store" in checks["tokens"]["detail"]
    assert checks["rules"]["status"] == "ok"
    assert checks["admin"]["status"] == "ok"


@pytest.mark.parametrize(
    ("offset_s", "status", "way"),
    [(120.0, "fail", "ahead of"), (-10.0, "warn", "behind"), (0.0, "ok", "within")],
)
async def test_clock_skew(
    sim: Simulator, tmp_path: Path, offset_s: float, status: str, way: str
) -> None:
    """Our clock against MTT's Date: above 5 s a warn, above 60 s a fail."""
    path = write_config(tmp_path, sim)
    clock: Callable[[], float] = lambda: time.time() + offset_s  # noqa: E731
    async with open_doctor(load_config(path), str(path), clock=clock) as ctx:
        check = await check_clock(ctx)
    assert check.status == status, check
    assert way in check.detail
    if status != "ok":
        assert "NTP" in check.fix


@pytest.mark.parametrize("key", ["park", "live_numbers"])
async def test_number_mtt_does_not_list(
    sim: Simulator, tmp_path: Path, capsys: pytest.CaptureFixture[str], key: str
) -> None:
    """A number in routing.park (or live_numbers) that MTT does not list: a fail naming it."""
    path = write_config(tmp_path, sim, routing={key: [NUMBER, UNLISTED_NUMBER]})
    await store_tokens(sim, tmp_path / "tokens.json")
    code, checks = await doctor(path, capsys)
    assert code == 1
    numbers = checks["numbers"]
    assert numbers["status"] == "fail"
    assert f"routing.{key} {UNLISTED_NUMBER}" in numbers["detail"]
    assert NUMBER not in numbers["detail"].split("(it lists")[0]


def test_invalid_config_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An invalid config: its problems on stderr, one per line, exit 2 and no report."""
    path = tmp_path / "bad.yaml"
    path.write_text("mtt:\n  client_id: x\nbogus: 1\n", encoding="utf-8")
    assert main(["doctor", "--config", str(path)]) == 2
    captured = capsys.readouterr()
    assert "bogus: unknown key" in captured.err.splitlines()
    assert captured.out == ""
