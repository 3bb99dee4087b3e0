"""The bench on Redis storage (``bench --storage``): a throwaway ``redis-server``, or a given URL,
and what Redis spent over each measured window.

``--storage redis`` starts ``redis-server`` here (a free port on 127.0.0.1, a temporary
directory, no persistence) and stops it afterwards: the reproducible way. ``--storage URL`` uses
that Redis, under a key prefix of its own (``mtt-bench:<random>:``), whose keys are deleted at the
end; its numbers then include whatever else that Redis serves.

Per window, from ``INFO`` before and after (the probe's own ``INFO`` left out):

- Redis CPU: ``/proc/<pid>/stat`` utime + stime of the server (its pid is known when started
  here, or found from the port when it listens on this machine), else ``used_cpu_user`` +
  ``used_cpu_sys``;
- commands: ``commandstats`` calls, each command counted once, those a Lua script runs included
  (Redis 7 counts them: one ``EVALSHA`` running ``ZADD`` and ``PUBLISH`` is three);
- round trips: ``total_reads_processed``, the read events of the server (a pipeline that arrives
  in one piece is one).

Divided by the calls routed in the window, they are the table's ``redis cpu ms/call``,
``cmds/call`` and ``trips/call``; ``--json`` adds each command's calls per routed call.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import shutil
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from router.bench import proc
from router.metrics import Metrics
from router.mtt.tokens import TokenResponse, TokenSet
from router.state.redis_conn import RedisOps, connect
from router.state.redis_tokens import RedisTokenStore

START_TIMEOUT_S = 10.0
OWN = "mtt-bench"
"""The prefix of the keys a bench writes into a Redis it did not start."""


class RedisProbeError(Exception):
    """Redis could not be started or reached."""


@dataclass(frozen=True)
class RedisSample:
    """Redis at one moment: CPU seconds so far, calls per command, read events."""

    cpu_s: float | None
    commands: dict[str, int]
    reads: int


@dataclass(frozen=True)
class RedisUse:
    """What Redis did over a window, per routed call."""

    cpu_ms_per_call: float | None
    cmds_per_call: float | None
    trips_per_call: float | None
    commands: dict[str, float] = field(default_factory=dict)
    """Calls of each command per routed call (the probe's ``INFO`` left out)."""


class RedisProbe:
    """Samples one Redis server (``INFO``, and ``/proc`` when its pid is known)."""

    def __init__(self, url: str, pid: int | None) -> None:
        self.url = url
        self.pid = pid
        self._client: aioredis.Redis = connect(url, role="cli")

    async def sample(self) -> RedisSample:
        """``INFO all`` now (and the pid's CPU when known)."""
        cpu = proc.cpu_seconds(self.pid) if self.pid else None
        try:
            info: dict[str, Any] = await self._client.info("all")
        except (RedisError, OSError) as exc:
            raise RedisProbeError(f"INFO from the bench's Redis failed: {exc}") from exc
        if cpu is None:
            cpu = float(info.get("used_cpu_user", 0.0)) + float(info.get("used_cpu_sys", 0.0))
        commands = {
            name.removeprefix("cmdstat_"): int(stats["calls"])
            for name, stats in info.items()
            if name.startswith("cmdstat_") and isinstance(stats, dict)
        }
        return RedisSample(cpu, commands, int(info.get("total_reads_processed", 0)))

    async def aclose(self) -> None:
        """Close the probe's connection."""
        with contextlib.suppress(RedisError, OSError):
            await self._client.aclose()


def use_between(before: RedisSample, after: RedisSample, routed: int) -> RedisUse:
    """Per routed call, what Redis did between two samples. The probe's own traffic (one
    ``INFO`` per sample, its read event included) is left out."""
    if routed <= 0:
        return RedisUse(None, None, None)
    delta = {
        name: calls - before.commands.get(name, 0)
        for name, calls in after.commands.items()
        if name != "info" and calls > before.commands.get(name, 0)
    }
    cpu = None if before.cpu_s is None or after.cpu_s is None else after.cpu_s - before.cpu_s
    return RedisUse(
        cpu_ms_per_call=None if cpu is None else round(cpu * 1000.0 / routed, 4),
        cmds_per_call=round(sum(delta.values()) / routed, 3),
        trips_per_call=round(max(0, after.reads - before.reads - 1) / routed, 3),
        commands={k: round(v / routed, 3) for k, v in sorted(delta.items())},
    )


@dataclass(frozen=True)
class BenchStorage:
    """Where the benchmarked daemon keeps its state, and the probe when that is Redis."""

    url: str
    """``memory``, or the Redis URL the daemon is given."""
    prefix: str = "mtt-router:"
    probe: RedisProbe | None = None

    def describe(self) -> dict[str, Any]:
        """For the report's ``daemon`` section (no password)."""
        if self.probe is None:
            return {"storage": "memory"}
        where = urlsplit(self.url)
        return {
            "storage": f"{where.scheme}://{where.hostname}:{where.port}{where.path}",
            "redis_pid": self.probe.pid,
        }

    async def seed_tokens(self, tokens: TokenResponse) -> None:
        """Put the simulator's token set where the daemon reads it (Redis: the token key)."""
        if self.probe is None:
            return
        client = connect(self.url, role="cli")
        try:
            ops = RedisOps(client, prefix=self.prefix, metrics=Metrics(), role="cli")
            await RedisTokenStore(ops).save(
                TokenSet.from_response(tokens, version=1), expected_version=None
            )
        finally:
            await client.aclose()


@contextlib.asynccontextmanager
async def bench_storage(
    storage: str, workdir: Path | None = None, *, probe_only: bool = False
) -> AsyncIterator[BenchStorage]:
    """``memory``; ``redis`` (a throwaway server, in ``workdir`` when given); or a Redis URL
    (a prefix of the bench's own, its keys deleted on exit; with ``probe_only``, the Redis of a
    daemon already running: only measured)."""
    if storage == "memory":
        yield BenchStorage("memory")
        return
    if storage == "redis":
        async with throwaway_redis(workdir) as (url, server_pid):
            probe = RedisProbe(url, server_pid)
            try:
                yield BenchStorage(url, probe=probe)
            finally:
                await probe.aclose()
        return
    where = urlsplit(storage)
    local = where.hostname in ("127.0.0.1", "localhost", "::1")
    probe = RedisProbe(storage, proc.pid_listening_on(where.port or 6379) if local else None)
    if probe_only:
        try:
            yield BenchStorage(storage, probe=probe)
        finally:
            await probe.aclose()
        return
    prefix = f"{OWN}:{secrets.token_hex(4)}:"
    try:
        yield BenchStorage(storage, prefix, probe)
    finally:
        await _delete_prefix(storage, prefix)
        await probe.aclose()


async def _delete_prefix(url: str, prefix: str) -> None:
    client = connect(url, role="cli")
    try:
        keys = [key async for key in client.scan_iter(match=f"{prefix}*", count=1000)]
        for start in range(0, len(keys), 1000):
            await client.delete(*keys[start : start + 1000])
    except (RedisError, OSError):
        pass  # claims expire in an hour, presence in four: nothing lasts
    finally:
        await client.aclose()


@contextlib.asynccontextmanager
async def throwaway_redis(workdir: Path | None = None) -> AsyncIterator[tuple[str, int]]:
    """``redis-server`` on a free port of 127.0.0.1, no persistence; ``(url, pid)``."""
    exe = shutil.which("redis-server")
    if exe is None:
        raise RedisProbeError("--storage redis needs redis-server (Debian: apt-get install redis)")
    with contextlib.ExitStack() as stack:
        if workdir is None:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="mtt-redis-")))
        else:
            workdir = workdir / "redis"
            workdir.mkdir(parents=True, exist_ok=True)
        port = proc.free_port()
        server = await asyncio.create_subprocess_exec(
            exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            "--dir", str(workdir), "--logfile", str(workdir / "redis.log"),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        try:
            url = f"redis://127.0.0.1:{port}/0"
            await _wait_up(url, server)
            yield url, server.pid
        finally:
            if server.returncode is None:
                server.terminate()
                try:
                    await asyncio.wait_for(server.wait(), 10)
                except TimeoutError:
                    server.kill()
                    await server.wait()


async def _wait_up(url: str, server: asyncio.subprocess.Process) -> None:
    client = connect(url, role="cli")
    deadline = time.monotonic() + START_TIMEOUT_S
    try:
        while True:
            with contextlib.suppress(RedisError, OSError):
                if await client.ping():
                    return
            if server.returncode is not None or time.monotonic() > deadline:
                raise RedisProbeError(f"redis-server did not start (exit {server.returncode})")
            await asyncio.sleep(0.05)
    finally:
        await client.aclose()
