"""``mtt-router auth login|status``, ``pbx ...`` and ``call`` run end to end against the simulator.

Each command runs through :func:`router.cli.main` in a worker thread (it calls ``asyncio.run``)
while the simulator serves on this test's loop.
"""

from __future__ import annotations

import asyncio
import json
import socket
import stat
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest
import structlog

from router.cli import main
from router.simulator import EndpointFault, Simulator
from router.state.memory import FileTokenStore
from tests.fixtures.net import free_port
from tests.mtt_support import expired_set, issued_set
from tests.polling import eventually


@pytest.fixture(autouse=True)
def _reset_logging() -> Iterator[None]:
    """Commands configure structlog to write to the captured stderr; undo that afterwards."""
    yield
    structlog.reset_defaults()


@pytest.fixture
def listen_port() -> int:
    """The port `auth login` serves its callback on."""
    return free_port()


@pytest.fixture
def config_path(tmp_path: Path, sim: Simulator, listen_port: int) -> Path:
    """A config file pointing at the simulator, with its tokens file in tmp_path."""
    path = tmp_path / "config.yaml"
    path.write_text(
        f"""\
mtt:
  client_id: "{sim.config.client_id}"
  client_secret: "${{TEST_MTT_SECRET}}"
  redirect_uri: "http://127.0.0.1:{listen_port}/mtt"
  oauth_url: "{sim.url}"
  api_url: "{sim.url}"
server:
  listen: "127.0.0.1:{listen_port}"
tokens_file: "{tmp_path / "tokens.json"}"
log:
  format: json
  level: info
""",
        encoding="utf-8",
    )
    return path


@pytest.fixture(autouse=True)
def _secret_env(monkeypatch: pytest.MonkeyPatch, sim: Simulator) -> None:
    """The client secret comes from the environment, as in production."""
    monkeypatch.setenv("TEST_MTT_SECRET", sim.config.client_secret)


async def run(*argv: str) -> int:
    """Run the CLI in a thread (it has its own event loop) and return its exit code."""
    return await asyncio.to_thread(main, list(argv))


async def login(sim: Simulator, config_path: Path) -> None:
    """Store tokens as a finished `auth login` would."""
    store = FileTokenStore(config_path.parent / "tokens.json")
    await store.save(issued_set(sim), expected_version=None)


def test_invalid_config_exits_2_naming_each_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An invalid config prints one line per problem on stderr and exits 2."""
    path = tmp_path / "bad.yaml"
    path.write_text("mtt:\n  client_id: x\n  api_url: ftp://nope\nbogus: 1\n", encoding="utf-8")
    assert main(["pbx", "numbers", "--config", str(path)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert "mtt.api_url: must be an absolute http(s) URL, got 'ftp://nope'" in err
    assert "bogus: unknown key" in err
    assert "mtt.client_secret: required" in err


def test_group_without_action_is_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    """`pbx` or `auth` alone print help and exit 2."""
    assert main(["pbx"]) == 2
    assert main(["auth"]) == 2
    assert "ACTION" in capsys.readouterr().err


async def test_auth_status_when_never_logged_in(
    config_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`auth status` with no tokens says so and exits 1."""
    assert await run("auth", "status", "--config", str(config_path)) == 1
    out = capsys.readouterr().out
    assert "Not authorised" in out
    assert "auth login" in out


async def test_auth_login_through_the_callback(
    sim: Simulator,
    sim_http: aiohttp.ClientSession,
    config_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`auth login` prints the URL, takes MTT's redirect on its callback and stores tokens 0600."""
    command = asyncio.create_task(run("auth", "login", "--config", str(config_path)))
    printed = ""

    def authorize_url() -> str | None:
        nonlocal printed
        printed += capsys.readouterr().out
        return next((w for w in printed.split() if "/oauth/authorize?" in w), None)

    url = await eventually(authorize_url, "auth login prints the authorize URL", timeout_s=10)
    async with sim_http.get(url) as page:  # the browser follows MTT's redirect to the callback
        assert page.status == 200
        assert "Authorised" in await page.text()
    assert await command == 0
    assert "Authorised. Tokens stored" in capsys.readouterr().out
    tokens_file = config_path.parent / "tokens.json"
    assert stat.S_IMODE(tokens_file.stat().st_mode) == 0o600
    stored = await FileTokenStore(tokens_file).load()
    assert stored is not None
    assert sim.tokens.grants["authorization_code"] == 1

    assert await run("auth", "status", "--config", str(config_path)) == 0
    out = capsys.readouterr().out
    assert "Authorised: yes" in out
    assert "valid until" in out
    assert stored.access_token not in out
    assert stored.refresh_token not in out

    assert await run("auth", "status", "--json", "--config", str(config_path)) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["authorized"] is True
    assert status["version"] == stored.version


async def test_auth_login_refuses_a_forged_state(
    sim_http: aiohttp.ClientSession, config_path: Path, listen_port: int
) -> None:
    """A callback with a state the command did not issue gets 400 and stores nothing."""
    command = asyncio.create_task(
        run("auth", "login", "--timeout", "3", "--config", str(config_path))
    )
    callback = f"http://127.0.0.1:{listen_port}/mtt"

    async def forged_status() -> int | None:
        try:
            async with sim_http.get(callback, params={"code": "c", "state": "forged"}) as r:
                return r.status
        except aiohttp.ClientConnectorError:
            return None  # not listening yet

    assert await eventually(forged_status, "auth login serves its callback", timeout_s=10) == 400
    assert await command == 1  # times out: the forged callback did not complete the login
    assert not (config_path.parent / "tokens.json").exists()


async def test_auth_login_callback_answers_like_the_daemon(
    sim_http: aiohttp.ClientSession,
    config_path: Path,
    listen_port: int,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Bare GET: 200; ``?error=`` with a forged state: 400, still waiting; with its own state:
    400, the state spent, exit 1 (the daemon's handler, so the daemon's pages and codes)."""
    command = asyncio.create_task(run("auth", "login", "--config", str(config_path)))
    callback = f"http://127.0.0.1:{listen_port}/mtt"
    printed = ""

    def authorize_url() -> str | None:
        nonlocal printed
        printed += capsys.readouterr().out
        return next((w for w in printed.split() if "/oauth/authorize?" in w), None)

    url = await eventually(authorize_url, "auth login prints the authorize URL", timeout_s=10)
    state = parse_qs(urlsplit(url).query)["state"][0]
    async with sim_http.get(callback) as r:
        assert (r.status, "OAuth callback of mtt-router" in await r.text()) == (200, True)
    async with sim_http.get(callback, params={"error": "access_denied", "state": "forged"}) as r:
        assert r.status == 400
    await asyncio.sleep(0.1)
    assert not command.done()  # a stray refusal does not end someone else's login
    denied = {"error": "access_denied", "error_description": "User said no", "state": state}
    async with sim_http.get(callback + "/", params=denied) as r:
        assert (r.status, "MTT said: User said no" in await r.text()) == (400, True)
    assert await command == 1
    assert "MTT refused the authorisation: User said no" in capsys.readouterr().err
    assert not (config_path.parent / "tokens.json").exists()


async def test_auth_login_gives_up_after_timeout(
    config_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With no callback the command exits 1 saying so."""
    assert await run("auth", "login", "--timeout", "0.2", "--config", str(config_path)) == 1
    assert "no callback within 0.2 s" in capsys.readouterr().err


async def test_auth_login_port_in_use(
    config_path: Path, listen_port: int, capsys: pytest.CaptureFixture[str]
) -> None:
    """When server.listen is taken (the daemon runs) the command explains and exits 1."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", listen_port))
        busy.listen()
        assert await run("auth", "login", "--config", str(config_path)) == 1
    assert "cannot listen on 127.0.0.1:" in capsys.readouterr().err


async def test_pbx_lists_as_tables(
    sim: Simulator, config_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """numbers, workplaces and terminals print aligned tables with headers."""
    await login(sim, config_path)
    assert await run("pbx", "numbers", "--config", str(config_path)) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["NUMBER", "TYPE"]
    assert [line.split() for line in lines[1:]] == [["74996497803", "-"], ["78005560251", "-"]]
    assert await run("pbx", "workplaces", "--config", str(config_path)) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split() == ["WORKPLACE", "NAME"]
    assert "883140777716581  Иван Иванов" in out
    assert await run("pbx", "terminals", "--config", str(config_path)) == 0
    assert capsys.readouterr().out.splitlines()[0].split() == ["TERMINAL", "WORKPLACE"]


async def test_pbx_lists_as_json(
    sim: Simulator, config_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--json after the subcommand prints a JSON list of objects."""
    await login(sim, config_path)
    assert await run("pbx", "workplaces", "--json", "--config", str(config_path)) == 0
    workplaces = json.loads(capsys.readouterr().out)
    assert workplaces[0] == {"workplace": "883140777716581", "name": "Иван Иванов"}
    assert await run("pbx", "numbers", "--json", "--config", str(config_path)) == 0
    assert json.loads(capsys.readouterr().out) == [
        {"number": "74996497803", "type": None},
        {"number": "78005560251", "type": None},
    ]


async def test_pbx_park_off_and_on(
    sim: Simulator, config_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`pbx park off|on` sends setParkingNumbers with the numbers in MTT's form."""
    await login(sim, config_path)
    argv = ("pbx", "park", "off", "74996497803", "+7 (800) 556-02-51", "--config")
    assert await run(*argv, str(config_path)) == 0
    assert sim.pbx.parked == set()
    assert "Parking off: 74996497803, 78005560251" in capsys.readouterr().out
    assert (
        await run("pbx", "park", "on", "88005560251", "--json", "--config", str(config_path)) == 0
    )
    assert json.loads(capsys.readouterr().out)["parking"] is True
    assert sim.pbx.parked == {"78005560251"}
    assert [r.body["params"] for r in sim.requests_to("setParkingNumbers")] == [
        {"numbers": ["74996497803", "78005560251"], "isParking": False},
        {"numbers": ["78005560251"], "isParking": True},
    ]


async def test_call_places_a_make_call(
    sim: Simulator, config_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`call CALLER_WORKPLACE CALLEE` sends makeCall and prints the call id."""
    await login(sim, config_path)
    argv = ("call", "883140582526566", "89219462761", "--json", "--config", str(config_path))
    assert await run(*argv) == 0
    result = json.loads(capsys.readouterr().out)
    assert sim.call(result["call_id"]) is not None
    [request] = sim.requests_to("makeCall")
    assert request.body == {"params": {"callerId": "883140582526566", "calleeId": "89219462761"}}


async def test_commands_refresh_and_persist_an_expired_token(
    sim: Simulator, config_path: Path
) -> None:
    """A command finding the access token expired refreshes it and saves the rotated set."""
    tokens_file = config_path.parent / "tokens.json"
    await FileTokenStore(tokens_file).save(expired_set(sim), expected_version=None)
    assert await run("pbx", "numbers", "--config", str(config_path)) == 0
    assert json.loads(tokens_file.read_text())["version"] == 2
    assert sim.tokens.grants["refresh_token"] == 1


async def test_pbx_without_login_exits_1(
    sim: Simulator, config_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without tokens a pbx command says to log in and exits 1, asking MTT nothing."""
    assert await run("pbx", "numbers", "--config", str(config_path)) == 1
    assert "not authorised with MTT: run `mtt-router auth login" in capsys.readouterr().err
    assert sim.requests_to() == []


async def test_mtt_failure_exits_1_with_its_message(
    sim: Simulator, config_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An MTT refusal is printed (with MTT's message) and exits 1."""
    await login(sim, config_path)
    sim.faults.set("makeCall", EndpointFault(status=400))
    assert await run("call", "1", "2", "--config", str(config_path)) == 1
    assert "MTT: makeCall: MTT answered 400: simulated fault" in capsys.readouterr().err
