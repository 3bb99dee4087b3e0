"""Fixtures for the Redis store tests: clients on the test's own Redis, flushed and closed."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

import pytest

from router.metrics import Metrics
from router.state.redis_conn import RedisOps, Role, connect
from tests.fixtures.net import RedisServer


class MakeOps(Protocol):
    """Builds a :class:`RedisOps` on its own client: one per simulated replica."""

    def __call__(
        self, *, role: Role = "daemon", url: str | None = None, metrics: Metrics | None = None
    ) -> RedisOps: ...


@pytest.fixture
async def make_ops(redis_url: str) -> AsyncIterator[MakeOps]:
    """A factory of Redis clients (each one a "replica"), all closed after the test."""
    made: list[RedisOps] = []

    def make(
        *, role: Role = "daemon", url: str | None = None, metrics: Metrics | None = None
    ) -> RedisOps:
        client = connect(url or redis_url, role=role)
        ops = RedisOps(client, prefix="test:", metrics=metrics or Metrics(), role=role)
        made.append(ops)
        return ops

    flusher = connect(redis_url, role="cli")
    await flusher.flushdb()
    await flusher.aclose()
    yield make
    for ops in made:
        await ops.client.aclose()


@pytest.fixture
def ops(make_ops: MakeOps) -> RedisOps:
    """One Redis client with the test prefix and fresh metrics."""
    return make_ops()


@pytest.fixture
def outage_ops(make_ops: MakeOps, redis_server: RedisServer) -> RedisOps:
    """A client on the private redis-server itself (never ``REDIS_URL``): tests stop it."""
    return make_ops(url=redis_server.url)


def errors(ops: RedisOps, op: str) -> float:
    """``mtt_router_storage_errors_total{op}`` of ``ops``' metrics."""
    value = ops.metrics.registry.get_sample_value("mtt_router_storage_errors_total", {"op": op})
    return value or 0.0
