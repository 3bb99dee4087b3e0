"""Redis connections that give up fast, and the one place Redis errors become ``StorageError``.

redis-py's defaults suit batch jobs, not a 5-second parking window: measured with redis-py 8.1,
a hung server (it accepts connections and never answers: SIGSTOP) holds a command for 5 s, the
default socket timeout, which is the whole window. :func:`connect` sets every timeout explicitly
per *role*: the daemon gives up within a quarter second (a stopped Redis: ~15 ms) and falls back
to local state; the CLI is more patient. Timeouts are not retried; a broken pooled connection is,
once.

Every store runs its commands through :meth:`RedisOps.run`, which bounds the whole operation,
turns any Redis or socket failure into :class:`~router.errors.StorageError`, counts
``mtt_router_storage_errors_total{op}`` and keeps :class:`RedisHealth` (``/readyz``) current.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import redis.asyncio as aioredis
import structlog
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import MasterNotFoundError
from redis.backoff import ConstantBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError

from router.config_redis import RedisOptions, is_sentinel_url, parse_sentinel_url
from router.errors import StorageError
from router.metrics import Metrics
from router.state.redis_sentinel import primary_of, sentinel_client, tls_kwargs

log = structlog.get_logger("router.state")

T = TypeVar("T")

Role = Literal["daemon", "cli"]


@dataclass(frozen=True)
class RedisTimeouts:
    """How long one role waits for Redis before giving up."""

    connect_timeout_s: float
    socket_timeout_s: float
    retries: int
    """Quick retries after a *connection* error (a pooled socket broken by a Redis restart).
    Timeouts are never retried: a hung server would only cost the same wait again."""
    retry_backoff_s: float
    health_check_interval_s: int
    """An idle pooled connection is PINGed before reuse after this long (redis-py wants an int)."""
    op_deadline_s: float
    """Hard bound on one operation, whatever redis-py does inside (reconnects, health checks)."""
    max_connections: int
    """Pool size. A burst of commands queues for a connection (a command takes well under a
    millisecond) instead of opening a socket per command: a new connection costs ~4 ms of
    handshake CPU, and 32 at once on a busy host missed the 0.25 s connect timeout. Each
    pub/sub subscriber (presence, client map, rules and directory watchers) holds one."""
    replica_wait_ms: int
    """``WAIT 1`` after a token write: how long a replica may take to acknowledge it. Below the
    socket timeout, or the wait itself would read as a dead Redis."""


ROLE_TIMEOUTS: dict[Role, RedisTimeouts] = {
    # A decision must survive a dead Redis with most of its 5 s window left.
    "daemon": RedisTimeouts(
        connect_timeout_s=0.25,
        socket_timeout_s=0.25,
        retries=1,
        retry_backoff_s=0.01,
        health_check_interval_s=5,
        op_deadline_s=0.45,
        max_connections=12,
        replica_wait_ms=150,
    ),
    # An operator waits a little longer, and an import sends batches of 10,000 fields.
    "cli": RedisTimeouts(
        connect_timeout_s=3.0,
        socket_timeout_s=15.0,
        retries=3,
        retry_backoff_s=0.2,
        health_check_interval_s=30,
        op_deadline_s=60.0,
        max_connections=8,
        replica_wait_ms=2000,
    ),
}


def connect(
    url: str, *, role: Role = "daemon", options: RedisOptions | None = None
) -> aioredis.Redis:
    """A Redis client for ``url`` with the timeouts of ``role`` (``daemon`` or ``cli``).

    ``url`` is a ``redis://``, ``rediss://`` or ``unix://`` URL, or a ``redis+sentinel://`` one
    (:mod:`router.state.redis_sentinel`); ``options`` (the config's ``redis:`` section) adds the
    TLS files and the sentinels' login. No I/O happens here: connections open on first use.
    Close the client with ``aclose()``. Responses are decoded to ``str``.
    """
    t = ROLE_TIMEOUTS[role]
    common: dict[str, Any] = {
        "max_connections": t.max_connections,
        "timeout": t.op_deadline_s,
        "decode_responses": True,
        "socket_connect_timeout": t.connect_timeout_s,
        "socket_timeout": t.socket_timeout_s,
        "retry": Retry(
            ConstantBackoff(t.retry_backoff_s),
            t.retries,
            supported_errors=(RedisConnectionError,),
        ),
        "retry_on_timeout": False,
        "health_check_interval": t.health_check_interval_s,
        "client_name": f"mtt-router-{role}",
    }
    tls = tls_kwargs(url, options)
    if is_sentinel_url(url):
        return sentinel_client(parse_sentinel_url(url), options or RedisOptions(), common, tls)
    pool = aioredis.BlockingConnectionPool.from_url(url, **common, **tls)
    return aioredis.Redis.from_pool(pool)


def redact_url(url: str) -> str:
    """``url`` with any password replaced by ``***`` (for logs and error messages)."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    creds, _, host = rest.rpartition("@")
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}" if user else f"{scheme}://***@{host}"


class RedisHealth:
    """Whether Redis answers: updated by every operation and by a background PING."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        self.up = False
        self.last_error: str | None = "not checked yet"
        self.changed_at = time.time()
        self._was_down = False
        self._metrics.storage_up.set(0)

    @property
    def known_down(self) -> bool:
        """True after a failed round trip and until the next good one (not before any check)."""
        return self._was_down and not self.up

    def mark_up(self) -> None:
        """Record a successful round trip (logged when it ends an outage)."""
        if not self.up:
            if self._was_down:
                log.info("storage_up")
            self.changed_at = time.time()
        self.up = True
        self.last_error = None
        self._metrics.storage_up.set(1)

    def mark_down(self, error: str) -> None:
        """Record a failed round trip (logged once per outage)."""
        if self.up or not self._was_down:
            log.warning("storage_down", error=error)
            self.changed_at = time.time()
        self._was_down = True
        self.up = False
        self.last_error = error
        self._metrics.storage_up.set(0)


def _describe(exc: BaseException) -> str:
    text = str(exc)
    if isinstance(exc, MasterNotFoundError):
        # redis-py appends the repr of each sentinel client tried (every setting, no reason)
        text = text.split(" : ", 1)[0] + " (no sentinel answered, or none names a usable primary)"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class RedisOps:
    """A Redis client with its key prefix, metrics and health: what every Redis store shares."""

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        prefix: str,
        metrics: Metrics,
        health: RedisHealth | None = None,
        role: Role = "daemon",
    ) -> None:
        self.client = client
        self.prefix = prefix
        self.metrics = metrics
        self.health = health if health is not None else RedisHealth(metrics)
        self.timeouts = ROLE_TIMEOUTS[role]

    def key(self, *parts: str) -> str:
        """The prefixed key (or channel) name ``prefix + 'a:b'``."""
        return self.prefix + ":".join(parts)

    async def run(self, op: str, call: Callable[[], Awaitable[T]], *, count: bool = True) -> T:
        """Await ``call()`` within the role's deadline; on failure raise :class:`StorageError`.

        ``op`` labels ``mtt_router_storage_errors_total`` (``count=False`` for health pings).
        """
        try:
            async with asyncio.timeout(self.timeouts.op_deadline_s):
                result = await call()
        except (RedisError, OSError, TimeoutError) as exc:
            # TimeoutError covers asyncio.timeout(); OSError covers sockets redis-py did not wrap.
            reason = _describe(exc)
            if isinstance(exc, ResponseError):
                self.health.mark_up()  # it answered: the command or the data is wrong, not Redis
            else:
                self.health.mark_down(reason)
            if count:
                self.metrics.storage_errors.labels(op).inc()
            raise StorageError(f"redis {op}: {reason}") from exc
        self.health.mark_up()
        return result

    async def ping(self) -> bool:
        """One PING; True when Redis answered (health is updated either way)."""
        try:
            await self.run("ping", self.client.ping, count=False)
        except StorageError:
            return False
        return True

    @property
    def primary(self) -> str | None:
        """With Sentinel, ``host:port`` of the primary in use (``None`` otherwise)."""
        return primary_of(self.client)


def raise_if_cancelling() -> None:
    """Re-raise a cancellation of the current task that something swallowed.

    On Python 3.11, ``asyncio.wait_for`` (redis-py sends every command through it) returns
    normally when a cancellation arrives just as the inner operation completes, and the task
    carries on. ``Task.cancelling()`` still counts the request, so loops check it.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


async def cancel_and_wait(task: asyncio.Task[None], message: str) -> None:
    """Cancel ``task`` and wait for it to end, cancelling again if a cancellation got lost."""
    for _ in range(50):
        task.cancel(message)
        done, _ = await asyncio.wait({task}, timeout=0.1)
        if done:
            with contextlib.suppress(asyncio.CancelledError):
                await task
            return
    log.error("task_would_not_stop", task=task.get_name())


class HealthProbe:
    """Background PING every ``interval_s`` so ``/readyz`` notices an outage with no traffic.

    With Sentinel it also logs ``storage_primary`` when the primary in use changes (a failover).
    """

    def __init__(self, ops: RedisOps, interval_s: float = 1.0) -> None:
        self._ops = ops
        self.interval_s = interval_s
        self._task: asyncio.Task[None] | None = None
        self.primary: str | None = None

    def start(self) -> None:
        """Start pinging (idempotent)."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="redis-health")

    async def aclose(self) -> None:
        """Stop pinging."""
        if self._task is not None:
            await cancel_and_wait(self._task, "redis health probe closing")
            self._task = None

    async def _run(self) -> None:
        while True:
            if await self._ops.ping() and (primary := self._ops.primary) != self.primary:
                log.info("storage_primary", primary=primary, previous=self.primary)
                self.primary = primary
            raise_if_cancelling()
            await asyncio.sleep(self.interval_s)
