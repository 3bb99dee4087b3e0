"""``server.workers`` / ``run --workers N``: one supervisor, N daemon processes on one port.

One rig for the module (a throwaway Redis, the simulator as a process, ``mtt-router run
--workers 2`` with its webhook pointed straight at the shared public port): both workers route
calls, a SIGHUP reloads both, a worker killed with SIGKILL is restarted and calls keep flowing,
and (last) SIGTERM stops everything with exit 0. Apart from it: memory storage refused with one
line and exit 2, and a worker that dies at once three times stops the supervisor with exit 1.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import signal
import socket
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from router.config import HostPort, ServerConfig, parse_config, workers_problems
from router.errors import ConfigError
from router.supervisor import GIVE_UP_AFTER
from router.worker import Worker
from tests.fixtures.net import RedisServer, free_port
from tests.fixtures.replicas import (
    ADMIN_TOKEN,
    IVANOV_CLIENT,
    NUMBER,
    ROOT,
    RULES,
    Balancer,
    Cluster,
    Proc,
    Replica,
    SimProcess,
    _start_sim,
    spawn,
)
from tests.polling import eventually

WORKERS = 2
BATCH = 8
"""Calls placed at once: the simulator opens several connections, which the kernel spreads."""
IN_RIG = pytest.mark.asyncio(loop_scope="module")


def free_run(count: int) -> int:
    """A free port whose next ``count`` ports are free too (the workers' admin listeners)."""
    for _ in range(50):
        base = free_port()
        try:
            for port in range(base + 1, base + count + 1):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base
    raise RuntimeError("no run of free ports")


def log_lines(path: Path) -> list[dict[str, Any]]:
    """The JSON lines of a log file (plain lines skipped)."""
    out = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if line.startswith("{"):
            out.append(json.loads(line))
    return out


@dataclass
class Rig:
    """The supervisor, its workers' admin listeners, the simulator, Redis."""

    proc: Proc
    admin_url: str
    workers: list[Replica]
    """Worker I's admin listener at index I - 1 (its metrics, /status, /readyz)."""
    sim: SimProcess
    http: aiohttp.ClientSession
    tmp: Path

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {ADMIN_TOKEN}"}

    async def get(self, path: str, **kwargs: Any) -> tuple[int, Any]:
        async with self.http.get(self.admin_url + path, allow_redirects=False, **kwargs) as resp:
            text = await resp.text()
            try:
                return resp.status, json.loads(text)
            except ValueError:
                return resp.status, resp.headers.get("Location", text)

    async def pids(self) -> dict[int, int | None]:
        """Worker index -> pid, from the supervisor's /workers."""
        code, body = await self.get("/workers", headers=self.auth)
        assert code == 200, body
        return {w["worker"]: w["pid"] for w in body["workers"]}

    async def ready(self) -> bool:
        """The supervisor's /readyz says 200 with every worker ready."""
        assert self.proc.alive, self.proc.log_tail()
        try:
            code, body = await self.get("/readyz")
        except aiohttp.ClientError:
            return False
        states = [w["state"] for w in body["workers"].values()] if isinstance(body, dict) else []
        return code == 200 and states == ["ready"] * WORKERS

    async def decided(self, index: int) -> float:
        return await self.workers[index - 1].decisions("transferred")

    async def place_batch(self) -> None:
        """``BATCH`` calls at once from a listed client; each must be transferred."""
        ids = await asyncio.gather(*(self.sim.place(IVANOV_CLIENT, NUMBER) for _ in range(BATCH)))
        for call_id in ids:
            outcome = await self.sim.outcome(call_id)
            assert outcome["outcome"] == "transferred", (outcome, self.proc.log_tail())

    async def until_handled_by(self, index: int, more_than: float = 0.0) -> None:
        """Place batches until worker ``index`` has transferred more than ``more_than``."""

        async def handled() -> bool:
            if await self.decided(index) > more_than:
                return True
            await self.place_batch()
            return False

        await eventually(handled, f"worker {index} routes calls", timeout_s=30.0)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def rig(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Rig]:
    tmp = tmp_path_factory.mktemp("workers")
    redis = RedisServer(port=free_port(), dir=tmp)
    await asyncio.to_thread(redis.start)
    sim: SimProcess | None = None
    proc: Proc | None = None
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as http:
        try:
            public_port, admin_port = free_port(), free_run(WORKERS)
            direct = Balancer(http)  # no balancer: the simulator posts to the shared port
            direct.url = f"http://127.0.0.1:{public_port}"
            sim = await _start_sim(tmp, webhook=direct.url + "/mtt/events", http=http, extra=[])
            cluster = Cluster(redis, sim, direct, http, tmp)
            config = cluster.config(
                "W",
                public_port=public_port,
                admin_port=admin_port,
                rules_source="file",
                admin_token=ADMIN_TOKEN,
            )
            # Idle keep-alive connections close after 1 s: each batch opens new ones.
            config["server"]["read_timeout_s"] = 1
            config["log"]["capture"] = str(tmp / "capture.jsonl")
            config_path = tmp / "workers.yaml"
            config_path.write_text(json.dumps(config), encoding="utf-8")
            await cluster.store_tokens()
            cluster.rules_path.write_text(RULES, encoding="utf-8")
            args = ["run", "--config", str(config_path), "--workers", str(WORKERS)]
            proc = spawn("supervisor", args, tmp / "run.log", stdout=subprocess.DEVNULL)
            workers = [
                Replica(
                    f"worker {i}",
                    proc,
                    config_path,
                    direct.url,
                    f"http://127.0.0.1:{admin_port + i}",
                    http,
                    admin_token=ADMIN_TOKEN,
                )
                for i in range(1, WORKERS + 1)
            ]
            rig = Rig(proc, f"http://127.0.0.1:{admin_port}", workers, sim, http, tmp)
            await eventually(rig.ready, "both workers ready", timeout_s=30.0)
            yield rig
        finally:
            if proc is not None and proc.alive:
                await proc.stop()
            if sim is not None:
                await sim.proc.stop()
            await asyncio.to_thread(redis.stop)


@IN_RIG
async def test_both_workers_route_calls_on_one_port(rig: Rig) -> None:
    """Two pids behind one public port; the kernel spreads the simulator's connections, so each
    worker decides calls: its own metrics, its own log lines (worker, pid), its own capture."""
    pids = await rig.pids()
    assert sorted(pids) == [1, 2]
    assert len(set(pids.values())) == 2
    for index in pids:
        await rig.until_handled_by(index)
    decisions = [line for line in log_lines(rig.tmp / "run.log") if line.get("event") == "decision"]
    assert {(line["worker"], line["pid"]) for line in decisions} == set(pids.items())

    def captured(path: Path) -> bool:
        return path.exists() and path.stat().st_size > 0

    for index in pids:
        capture = rig.tmp / f"capture.w{index}.jsonl"
        await eventually(functools.partial(captured, capture), f"{capture.name} written")
    assert not (rig.tmp / "capture.jsonl").exists()


@IN_RIG
async def test_the_supervisor_answers_for_the_set(rig: Rig) -> None:
    """/healthz and /readyz of the admin port name every worker; /metrics points Prometheus at
    the workers; other paths are redirected to a worker's own admin port; /workers needs the
    token."""
    code, health = await rig.get("/healthz")
    assert code == 200
    assert health["workers"] == {"1": "ok", "2": "ok"}
    code, ready = await rig.get("/readyz")
    assert code == 200
    assert ready["ready"] is True
    assert all(w["checks"]["token"] == "ok" for w in ready["workers"].values())
    code, body = await rig.get("/metrics", headers=rig.auth)
    assert code == 404
    assert body["targets"] == [w.admin_url + "/metrics" for w in rig.workers]
    code, location = await rig.get("/status?x=1", headers=rig.auth)
    assert code == 307
    assert location == rig.workers[0].admin_url + "/status?x=1"
    code, _ = await rig.get("/workers")
    assert code == 401
    for worker in rig.workers:  # each worker's own admin listener
        assert (await worker.readyz())[0] == 200


@IN_RIG
async def test_sighup_reloads_the_rules_in_every_worker(rig: Rig) -> None:
    async def reloads() -> list[float]:
        return [await w.metric("mtt_router_rules_reloads_total", result="ok") for w in rig.workers]

    before = await reloads()
    rig.proc.popen.send_signal(signal.SIGHUP)

    async def all_reloaded() -> bool:
        return all(a == b + 1 for a, b in zip(await reloads(), before, strict=True))

    await eventually(all_reloaded, "rules_reloads_total{result=ok} + 1 in each worker")
    forwarded = [e for e in log_lines(rig.tmp / "run.log") if e["event"] == "sighup_forwarded"]
    assert forwarded
    assert set(forwarded[-1]["workers"]) == {"1", "2"}


@IN_RIG
async def test_a_killed_worker_is_restarted_and_calls_keep_flowing(rig: Rig) -> None:
    old = await rig.pids()
    killed = old[2]
    assert killed is not None
    os.kill(killed, signal.SIGKILL)

    async def second() -> dict[str, Any]:
        _code, body = await rig.get("/workers", headers=rig.auth)
        return dict(body["workers"][1])

    async def reaped() -> bool:
        return bool((await second())["pid"] != killed)

    # A notification on its way to the process as it died is lost with it (as with any crash);
    # from then on the kernel gives worker 1 every connection until the new worker listens.
    await eventually(reaped, "worker 2 reaped")
    await rig.place_batch()

    async def restarted() -> dict[str, Any] | None:
        now = await second()
        return now if now["pid"] is not None else None

    restart = await eventually(restarted, "worker 2 started again")
    assert restart["restarts"] == 1
    assert restart["last_exit"] == "signal SIGKILL"
    assert (await rig.pids())[1] == old[1]
    await eventually(rig.ready, "both workers ready again", timeout_s=30.0)
    await rig.until_handled_by(2)  # the new process's counters start at 0
    events = log_lines(rig.tmp / "run.log")
    exited = [e for e in events if e["event"] == "worker_exited"]
    assert [(e["worker"], e["pid"], e["exit"]) for e in exited] == [(2, old[2], "signal SIGKILL")]


@IN_RIG
async def test_sigterm_stops_every_worker_with_exit_0(rig: Rig) -> None:
    """The last test of the rig: the supervisor forwards SIGTERM, each worker drains and exits 0,
    then the supervisor does."""
    pids = await rig.pids()
    code = await rig.proc.stop()
    assert code == 0, rig.proc.log_tail()
    events = log_lines(rig.tmp / "run.log")
    stopped = {(e["worker"], e["pid"]): e["exit"] for e in events if e["event"] == "worker_stopped"}
    assert stopped == dict.fromkeys(pids.items(), "exit 0")
    for pid in pids.values():
        assert pid is not None
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


# -- without the rig ---------------------------------------------------------------------------

BASE = {"mtt": {"client_id": "x", "client_secret": "y", "redirect_uri": "https://h/mtt"}}


def test_the_config_checks_what_workers_need() -> None:
    """More than one worker: a Redis storage, a named public port, N admin ports after
    admin_listen's; 1 to 64 of them."""
    server = ServerConfig(workers=2)
    assert workers_problems(ServerConfig(), "memory") == []
    assert workers_problems(server, "redis://r:6379/0") == []
    [memory] = workers_problems(server, "memory", key="--workers")
    assert memory.startswith("--workers: 2 workers need a Redis storage")
    any_port = ServerConfig(workers=2, listen=HostPort("0.0.0.0", 0))
    assert workers_problems(any_port, "redis://r")[0].startswith("server.listen:")
    top = ServerConfig(workers=3, admin_listen=HostPort("127.0.0.1", 65533))
    assert workers_problems(top, "redis://r")[0].startswith("server.admin_listen:")
    for bad in (0, 65, "2"):
        with pytest.raises(ConfigError) as info:
            parse_config(BASE | {"storage": "redis://r", "server": {"workers": bad}}, env={})
        assert info.value.problems[0].startswith("server.workers: must be an integer")
    config = parse_config(BASE | {"storage": "redis://r", "server": {"workers": 4}}, env={})
    assert config.server.workers == 4


def test_each_worker_captures_to_its_own_file() -> None:
    assert Worker(2).capture_path("/var/lib/x/capture.jsonl") == "/var/lib/x/capture.w2.jsonl"
    assert Worker(1).capture_path("") == ""
    assert Worker(3).admin_address(HostPort("0.0.0.0", 9100)) == HostPort("0.0.0.0", 9103)


@pytest.mark.parametrize("how", ["config", "flag"])
async def test_memory_storage_is_refused_with_one_line(tmp_path: Path, how: str) -> None:
    """Each worker would keep its own claims and tokens: exit 2 before anything starts."""
    server: dict[str, Any] = {"listen": f"127.0.0.1:{free_port()}"}
    args = ["run", "--config", str(tmp_path / "c.yaml")]
    if how == "config":
        server["workers"] = 2
    else:
        args += ["--workers", "2"]
    config = BASE | {"server": server, "storage": "memory"}
    (tmp_path / "c.yaml").write_text(json.dumps(config), encoding="utf-8")
    proc = spawn("run", args, tmp_path / "run.log", stdout=subprocess.PIPE)
    assert await asyncio.to_thread(proc.popen.wait, 30) == 2
    assert proc.popen.stdout is not None
    assert proc.popen.stdout.read() == b""
    [line] = (tmp_path / "run.log").read_text(encoding="utf-8").splitlines()
    key = "server.workers" if how == "config" else "--workers"
    assert line == (
        f"{key}: 2 workers need a Redis storage (storage: redis://...): with memory storage "
        "each worker would keep its own call claims and tokens"
    )
    await proc.stop()


async def test_a_worker_dying_at_once_stops_the_supervisor(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """Worker 1's admin port is taken: it dies at each start; restarted after a growing delay,
    the third fast death stops worker 2 (exit 0) and the supervisor (exit 1, one line)."""
    admin_port = free_run(WORKERS)
    mtt = f"http://127.0.0.1:{free_port()}"  # nobody: the workers start without MTT
    config = BASE | {
        "mtt": BASE["mtt"] | {"oauth_url": mtt, "api_url": mtt},
        "server": {"listen": f"127.0.0.1:{free_port()}", "admin_listen": f"127.0.0.1:{admin_port}"},
        "storage": redis_server.url,
        "rules": {"path": str(ROOT / "rules" / "example.yaml")},
    }
    (tmp_path / "c.yaml").write_text(json.dumps(config), encoding="utf-8")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", admin_port + 1))
        taken.listen()
        args = ["run", "--config", str(tmp_path / "c.yaml"), "--workers", "2"]
        proc = spawn("supervisor", args, tmp_path / "run.log", stdout=subprocess.DEVNULL)
        try:
            code = await asyncio.to_thread(proc.popen.wait, 60)
        finally:
            await proc.stop()
    assert code == 1, proc.log_tail()
    events = log_lines(tmp_path / "run.log")
    started = [e for e in events if e["event"] == "worker_started" and e["worker"] == 1]
    assert len(started) == GIVE_UP_AFTER
    delays = [e["in_s"] for e in events if e["event"] == "worker_restarting"]
    assert delays == sorted(delays)
    assert len(set(delays)) == GIVE_UP_AFTER - 1
    [failing] = [e for e in events if e["event"] == "workers_failing"]
    assert (failing["worker"], failing["exit"], failing["level"]) == (1, "exit 1", "error")
    [second] = [e for e in events if e["event"] == "worker_stopped"]
    assert (second["worker"], second["exit"]) == (2, "exit 0")
