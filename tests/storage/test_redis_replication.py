"""A token write waits for a replica (``WAIT 1``), and says so when none acknowledges it.

Replication is asynchronous: without the wait, a primary that dies right after storing a freshly
refreshed token set can take it along, and MTT has already retired the refresh token it replaced.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator, MutableMapping
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from router.metrics import Metrics
from router.mtt.tokens import TokenSet
from router.state.redis_conn import ROLE_TIMEOUTS, RedisOps, connect
from router.state.redis_tokens import NO_REPLICA, RedisTokenStore
from tests.fixtures.redis_ha import Node, in_sync
from tests.polling import eventually


def tokens(version: int) -> TokenSet:
    now = time.time()
    return TokenSet(
        f"access-{version}", f"refresh-{version}", now + 3600, now + 86400, now, version=version
    )


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[Node, Node]]:
    """A primary and its replica, in sync."""
    primary = Node("primary", tmp_path, [])
    replica = Node("replica", tmp_path, ["--replicaof", "127.0.0.1", str(primary.port)])
    try:
        primary.start()
        replica.start()
        in_sync(primary, replica)
        yield primary, replica
    finally:
        replica.stop()
        primary.stop()


def replication_events(logs: list[MutableMapping[str, Any]]) -> list[tuple[object, object]]:
    return [(e["event"], e.get("reason")) for e in logs if e["event"] in REPLICATION_EVENTS]


REPLICATION_EVENTS = ("tokens_not_replicated", "tokens_replicated")


async def test_a_token_write_waits_for_the_replica(pair: tuple[Node, Node]) -> None:
    """Acknowledged: the replica has the set when save returns. A stopped replica (SIGSTOP) makes
    the save wait its bound and succeed anyway, with one warning for two saves; an
    acknowledged save afterwards says so."""
    primary, replica = pair
    assert replica.proc is not None
    client = connect(f"redis://127.0.0.1:{primary.port}/0", role="daemon")
    store = RedisTokenStore(RedisOps(client, prefix="test:", metrics=Metrics()))
    on_replica = replica.client()
    wait_ms = ROLE_TIMEOUTS["daemon"].replica_wait_ms
    try:
        with capture_logs() as logs:
            assert await store.save(tokens(1), expected_version=None)
            assert await on_replica.hget("test:tokens", "version") == "1"
            os.kill(replica.proc.pid, signal.SIGSTOP)
            try:
                assert await store.save(tokens(2), expected_version=1)
                assert await store.save(tokens(3), expected_version=2)
            finally:
                os.kill(replica.proc.pid, signal.SIGCONT)

            async def caught_up() -> bool:
                return await on_replica.hget("test:tokens", "version") == "3"

            await eventually(caught_up, "the replica caught up")
            assert await store.save(tokens(4), expected_version=3)
        assert replication_events(logs) == [
            ("tokens_not_replicated", f"no replica of 1 acknowledged within {wait_ms} ms"),
            ("tokens_replicated", None),
        ]
    finally:
        await on_replica.aclose()
        await client.aclose()


async def test_a_primary_without_replica_is_warned_about_once(ops: RedisOps) -> None:
    """No replica: nothing to wait for; one warning for any number of saves."""
    store = RedisTokenStore(ops)
    with capture_logs() as logs:
        assert await store.save(tokens(1), expected_version=None)
        assert await store.save(tokens(2), expected_version=1)
    assert replication_events(logs) == [("tokens_not_replicated", NO_REPLICA)]
    loaded = await store.load()
    assert loaded is not None
    assert loaded.version == 2
