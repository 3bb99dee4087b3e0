"""``mtt-router simulate`` as a real process: it listens, answers, and stops cleanly on SIGTERM."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
from pathlib import Path

import aiohttp
import pytest
import structlog

from router.cli import build_parser, main
from router.commands.simulate import build_config, serve
from tests.fixtures.sim import WebhookSink, call_info

ROOT = Path(__file__).resolve().parents[1]


async def test_simulate_serves_until_sigterm(
    webhook_sink: WebhookSink, sim_http: aiohttp.ClientSession
) -> None:
    """Prints its URL as JSON, plays MTT (OAuth, API, calls), exits 0 on SIGTERM."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "router",
        "simulate",
        "--listen",
        "127.0.0.1:0",
        "--webhook",
        webhook_sink.url,
        "--workplaces",
        "3",
        "--parking-window-s",
        "0.3",
        "--talk-ms",
        "10",
        "--answer-after-ms",
        "10",
        cwd=ROOT,
        env={**os.environ, "PYTHONIOENCODING": "utf-8"},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = json.loads(await asyncio.wait_for(proc.stdout.readline(), 20))
        assert line["event"] == "listening"
        url = line["url"]
        assert line["api_url"] == line["oauth_url"] == url
        async with sim_http.get(f"{url}/externalNumbersInfo") as resp:
            assert resp.status == 401
        async with sim_http.post(f"{url}/_sim/tokens") as resp:
            token = (await resp.json())["access_token"]
        headers = {"Authorization": f"Bearer {token}"}
        async with sim_http.get(f"{url}/workPlacesInfo", headers=headers) as resp:
            assert (await resp.json())["result"]["total"] == 3
        body = {"caller": "78124241500", "callee": "74996497803"}
        async with sim_http.post(f"{url}/_sim/calls", json=body) as resp:
            call_id = (await resp.json())["call"]["id"]
        trying = call_info(await webhook_sink.wait_for(lambda b: bool(call_info(b))))
        assert (trying["call"]["id"], trying["state"]) == (call_id, "trying")
        # Nobody decides: after the 0.3 s window the PBX routes it to a workplace.
        await webhook_sink.wait_state(call_id, "connected")
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 0, stderr.decode()
    assert b"simulator stopping" in stderr


@pytest.mark.parametrize(
    "args",
    [
        ["--listen", "nowhere"],
        ["--parked", "70000000000"],
        ["--parking-window-s", "0"],
        ["--workplaces", ","],
    ],
)
def test_simulate_bad_usage_exits_2(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """Invalid flags: a message on stderr and exit code 2, before anything listens."""
    assert main(["simulate", *args]) == 2
    assert capsys.readouterr().err.startswith("simulate: ")


async def test_serve_in_process(sim_http: aiohttp.ClientSession) -> None:
    """``serve`` announces the URL, answers, and returns once ``stop`` is set."""
    args = build_parser().parse_args(
        ["simulate", "--numbers", "78121234567", "--parked", "none", "--workplaces", "100,200"]
    )
    config = build_config(args)
    assert (config.numbers, config.parked, config.workplaces) == (
        ("78121234567",),
        (),
        ("100", "200"),
    )
    stop = asyncio.Event()
    lines: asyncio.Queue[str] = asyncio.Queue()
    task = asyncio.create_task(serve(config, "127.0.0.1", 0, stop, lines.put_nowait))
    url = json.loads(await asyncio.wait_for(lines.get(), 10))["url"]
    async with sim_http.get(f"{url}/_sim/workplaces") as resp:
        assert [w["workplace"] for w in (await resp.json())["workplaces"]] == ["100", "200"]
    stop.set()
    await asyncio.wait_for(task, 10)


def test_build_config_flags() -> None:
    """Flags map onto SimConfig: never-answer, key variant, redirect URI, parked subset."""
    args = build_parser().parse_args(
        [
            "simulate",
            "--answer-after-ms",
            "-1",
            "--terminals-key",
            "terminalsList",
            "--redirect-uri",
            "https://router.example.ru/mtt",
            "--parked",
            "74996497803",
            "--seed",
            "3",
        ]
    )
    config = build_config(args)
    assert config.answer_after_ms is None
    assert config.terminals_key == "terminalsList"
    assert config.redirect_uri == "https://router.example.ru/mtt"
    assert config.parked == ("74996497803",)
    assert config.seed == 3


def test_simulate_reports_a_port_in_use(capsys: pytest.CaptureFixture[str]) -> None:
    """A port that cannot be bound: exit 1 with the reason."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        try:
            assert main(["simulate", "--listen", f"127.0.0.1:{port}"]) == 1
        finally:
            structlog.reset_defaults()  # run() configured logging onto capsys's stream
    assert "cannot listen" in capsys.readouterr().err
