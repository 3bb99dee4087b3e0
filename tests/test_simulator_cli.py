"""``mtt-router simulate`` as a real process: it listens, answers, and stops cleanly on SIGTERM."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import aiohttp
import pytest

from router.cli import main
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
