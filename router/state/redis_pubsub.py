"""One pub/sub channel kept subscribed through Redis restarts, with a periodic tick.

Pub/sub is fire-and-forget: a message published while a replica is disconnected is lost. So the
subscriber tells its owner when a subscription (re)starts (``on_connect``: re-read whatever may
have changed) and when it is lost (``on_disconnect``: stop trusting caches), and calls ``on_tick``
every few seconds as a safety net. It reconnects with capped exponential backoff and never dies of
a Redis error or of a failing callback.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Awaitable, Callable

import redis.asyncio as aioredis
import structlog
from redis.exceptions import RedisError

from router.state.redis_conn import cancel_and_wait, raise_if_cancelling

log = structlog.get_logger("router.state")

BACKOFF_INITIAL_S = 0.1
BACKOFF_MAX_S = 5.0
MAX_WAIT_S = 1.0
"""Longest single wait for a message: a cancellation lost inside redis-py is honoured by then."""


class Subscriber:
    """Listens on ``channel`` in a background task owned by this object."""

    def __init__(
        self,
        client: aioredis.Redis,
        channel: str,
        *,
        name: str,
        on_message: Callable[[str], Awaitable[None]],
        on_connect: Callable[[], Awaitable[None]] | None = None,
        on_disconnect: Callable[[], None] | None = None,
        on_tick: Callable[[], Awaitable[None]] | None = None,
        tick_s: float = 2.0,
        backoff_initial_s: float = BACKOFF_INITIAL_S,
        backoff_max_s: float = BACKOFF_MAX_S,
    ) -> None:
        self._client = client
        self.channel = channel
        self.name = name
        self._on_message = on_message
        self._on_connect = on_connect
        self._on_disconnect = on_disconnect
        self._on_tick = on_tick
        self.tick_s = tick_s
        self._backoff_initial_s = backoff_initial_s
        self._backoff_max_s = backoff_max_s
        self.subscribed = asyncio.Event()
        """Set while subscribed (after ``on_connect`` ran), cleared when the connection is lost."""
        self.reconnects = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start listening (idempotent)."""
        if self._task is None:
            self._task = asyncio.create_task(self.run(), name=f"redis-sub-{self.name}")

    async def aclose(self) -> None:
        """Stop listening and close the pub/sub connection."""
        if self._task is not None:
            await cancel_and_wait(self._task, f"{self.name} subscriber closing")
            self._task = None

    async def run(self) -> None:
        """Listen until cancelled, reconnecting with backoff after every failure."""
        delay = self._backoff_initial_s
        while True:
            pubsub = self._client.pubsub()
            try:
                await pubsub.subscribe(self.channel)
                await self._listen(pubsub)
            except (RedisError, OSError, TimeoutError) as exc:
                if self.subscribed.is_set():
                    log.warning("pubsub_lost", channel=self.channel, error=str(exc))
                    delay = self._backoff_initial_s
                self._lost()
            except Exception:  # a bug in a callback must not stop change notifications
                log.exception("pubsub_failed", channel=self.channel)
                self._lost()
            finally:
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]  # redis-py: untyped
            # Jitter spreads the reconnects of many replicas after a Redis restart.
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, self._backoff_max_s)

    def _lost(self) -> None:
        if self.subscribed.is_set():
            self.subscribed.clear()
            self.reconnects += 1
        if self._on_disconnect is not None:
            self._on_disconnect()

    async def _listen(self, pubsub: aioredis.client.PubSub) -> None:
        loop = asyncio.get_running_loop()
        next_tick = loop.time() + self.tick_s
        while True:
            wait_s = min(MAX_WAIT_S, max(0.001, next_tick - loop.time()))
            message = await pubsub.get_message(timeout=wait_s)
            raise_if_cancelling()
            if message is not None:
                kind = message.get("type")
                if kind == "subscribe":
                    # Also seen when redis-py resubscribes by itself after a reconnect:
                    # anything published meanwhile is lost, so the owner re-reads.
                    await self._call("on_connect", self._on_connect)
                    self.subscribed.set()
                elif kind == "message":
                    await self._call("on_message", self._on_message, str(message["data"]))
            if loop.time() >= next_tick:
                await self._call("on_tick", self._on_tick)
                next_tick = loop.time() + self.tick_s

    async def _call(
        self,
        what: str,
        callback: Callable[..., Awaitable[None]] | None,
        *args: str,
    ) -> None:
        if callback is None:
            return
        try:
            await callback(*args)
        except Exception as exc:  # logged, and the next message or tick tries again
            log.warning(
                "pubsub_callback_failed", channel=self.channel, callback=what, error=str(exc)
            )
