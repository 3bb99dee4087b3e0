"""Connections that give up fast, errors turned into StorageError, and the health flag."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator

import pytest

from router.errors import StorageError
from router.metrics import Metrics
from router.state.redis_conn import ROLE_TIMEOUTS, HealthProbe, RedisOps, connect, redact_url
from tests.fixtures.net import RedisServer, free_port
from tests.polling import eventually
from tests.storage.conftest import MakeOps, errors

# Generous bounds for a loaded CI machine; the measured times are printed (pytest -s).
DEAD_REDIS_BOUND_S = 0.5


@pytest.fixture
def frozen(redis_server: RedisServer) -> Iterator[RedisServer]:
    """The test's redis-server, to be SIGSTOPped by the test and always SIGCONTinued after."""
    yield redis_server
    if redis_server.proc is not None:
        os.kill(redis_server.proc.pid, signal.SIGCONT)


def freeze(server: RedisServer) -> None:
    assert server.proc is not None
    os.kill(server.proc.pid, signal.SIGSTOP)


async def test_connect_sets_explicit_timeouts() -> None:
    """The daemon's client gives up within a quarter second and retries once; the CLI waits."""
    for role in ("daemon", "cli"):
        client = connect("redis://127.0.0.1:1/0", role=role)
        kwargs = client.connection_pool.connection_kwargs
        timeouts = ROLE_TIMEOUTS[role]
        assert kwargs["socket_connect_timeout"] == timeouts.connect_timeout_s
        assert kwargs["socket_timeout"] == timeouts.socket_timeout_s
        assert kwargs["retry"].get_retries() == timeouts.retries
        assert kwargs["health_check_interval"] == timeouts.health_check_interval_s
        await client.aclose()
    assert ROLE_TIMEOUTS["daemon"].socket_timeout_s <= 0.25
    assert ROLE_TIMEOUTS["daemon"].op_deadline_s < 0.5


async def test_stopped_redis_fails_fast_and_is_counted(
    outage_ops: RedisOps, redis_server: RedisServer
) -> None:
    """With Redis stopped, an operation on a pooled connection raises StorageError in < 0.5 s."""
    client = outage_ops.client
    await outage_ops.run("test.set", lambda: client.set("k", "v"))
    assert outage_ops.metrics.registry.get_sample_value("mtt_router_storage_up") == 1
    redis_server.stop()
    started = time.monotonic()
    with pytest.raises(StorageError, match=r"redis test\.get"):
        await outage_ops.run("test.get", lambda: client.get("k"))
    elapsed = time.monotonic() - started
    print(f"stopped redis: failed after {elapsed * 1000:.1f} ms")
    assert elapsed < DEAD_REDIS_BOUND_S
    assert not outage_ops.health.up
    assert errors(outage_ops, "test.get") == 1
    assert outage_ops.metrics.registry.get_sample_value("mtt_router_storage_up") == 0


async def test_refused_connection_fails_fast(make_ops: MakeOps) -> None:
    """A fresh client to a port nobody listens on fails in < 0.5 s (redis-py's default: ~4 s)."""
    ops = make_ops(url=f"redis://127.0.0.1:{free_port()}/0")
    started = time.monotonic()
    with pytest.raises(StorageError):
        await ops.run("test.get", lambda: ops.client.get("k"))
    elapsed = time.monotonic() - started
    print(f"refused connection: failed after {elapsed * 1000:.1f} ms")
    assert elapsed < DEAD_REDIS_BOUND_S


async def test_hung_redis_fails_within_socket_timeout(
    outage_ops: RedisOps, frozen: RedisServer
) -> None:
    """A SIGSTOPped Redis (accepts, never answers) costs one socket timeout, not 40 s."""
    client = outage_ops.client
    await outage_ops.run("test.set", lambda: client.set("k", "v"))
    freeze(frozen)
    started = time.monotonic()
    with pytest.raises(StorageError, match="Timeout"):
        await outage_ops.run("test.get", lambda: client.get("k"))
    elapsed = time.monotonic() - started
    print(f"hung redis (pooled connection): failed after {elapsed * 1000:.1f} ms")
    assert ROLE_TIMEOUTS["daemon"].socket_timeout_s * 0.9 <= elapsed < DEAD_REDIS_BOUND_S


async def test_hung_redis_fails_fast_on_a_new_connection(
    make_ops: MakeOps, frozen: RedisServer
) -> None:
    """A new connection to a hung Redis (the handshake never answers) also fails in < 0.5 s."""
    ops = make_ops(url=frozen.url)
    freeze(frozen)
    started = time.monotonic()
    with pytest.raises(StorageError):
        await ops.run("test.get", lambda: ops.client.get("k"))
    elapsed = time.monotonic() - started
    print(f"hung redis (new connection): failed after {elapsed * 1000:.1f} ms")
    assert elapsed < DEAD_REDIS_BOUND_S


async def test_recovers_after_a_restart(outage_ops: RedisOps, redis_server: RedisServer) -> None:
    """After Redis restarts on the same port, the next operation reconnects and succeeds."""
    client = outage_ops.client
    await outage_ops.run("test.set", lambda: client.set("k", "v"))
    redis_server.stop()
    with pytest.raises(StorageError):
        await outage_ops.run("test.get", lambda: client.get("k"))
    redis_server.start()
    assert await outage_ops.run("test.set", lambda: client.set("k", "w"))
    assert outage_ops.health.up


async def test_health_probe_follows_an_outage(
    outage_ops: RedisOps, redis_server: RedisServer
) -> None:
    """The background PING marks Redis down while stopped and up again once it is back."""
    probe = HealthProbe(outage_ops, interval_s=0.02)
    probe.start()
    try:
        await eventually(lambda: outage_ops.health.up, "up", timeout_s=2.0)
        redis_server.stop()
        await eventually(lambda: not outage_ops.health.up, "down", timeout_s=2.0)
        assert outage_ops.health.last_error
        redis_server.start()
        await eventually(lambda: outage_ops.health.up, "up again", timeout_s=2.0)
    finally:
        await probe.aclose()
    assert errors(outage_ops, "ping") == 0  # pings are not fallbacks: not counted


async def test_a_command_error_is_a_storage_error_but_redis_is_up(ops: RedisOps) -> None:
    """A Redis error reply (WRONGTYPE) raises StorageError without marking Redis down."""
    client = ops.client
    await ops.run("test.set", lambda: client.set("s", "v"))
    with pytest.raises(StorageError, match="WRONGTYPE"):
        await ops.run("test.hget", lambda: client.hget("s", "f"))
    assert ops.health.up
    assert errors(ops, "test.hget") == 1


def test_key_names_carry_the_prefix() -> None:
    """Keys and channels start with the configured prefix."""
    ops = RedisOps(connect("redis://127.0.0.1:1/0"), prefix="p:", metrics=Metrics())
    assert ops.key("claim", "abc") == "p:claim:abc"


def test_redact_url_hides_the_password() -> None:
    """A Redis URL printed in a message never shows its password."""
    assert redact_url("redis://user:secret@h:6379/0") == "redis://user:***@h:6379/0"
    assert redact_url("redis://:secret@h:6379/0") == "redis://***@h:6379/0"
    assert redact_url("redis://h:6379/0") == "redis://h:6379/0"
