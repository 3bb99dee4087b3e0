"""Delivery of notifications to the webhook: keep-alive connection pools, one POST at a time.

Plain ``http://`` webhooks (tests, the demo, the bench) go through the lean
:class:`~router.simulator.http1.Http1Client`; ``https://`` ones through one aiohttp session.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import aiohttp
import orjson

from router.simulator.http1 import Done, Http1Client

_JSON = {"Content-Type": "application/json"}


def encode(payload: Mapping[str, Any]) -> bytes:
    """The JSON body (UTF-8 as is, like MTT's Russian display names)."""
    return orjson.dumps(payload)


class WebhookSender:
    """POSTs JSON bodies like MTT does; opened and closed by the app's cleanup context."""

    def __init__(self, timeout_s: float, connections: int) -> None:
        self._timeout_s = timeout_s
        self._connections = connections
        self._session: aiohttp.ClientSession | None = None
        self._http1: Http1Client | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._futures: set[asyncio.Future[int]] = set()

    async def open(self) -> None:
        """Create the clients (inside the running loop)."""
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._connections),
                timeout=aiohttp.ClientTimeout(total=self._timeout_s),
            )
            self._http1 = Http1Client(
                asyncio.get_running_loop(), self._timeout_s, self._connections
            )

    async def close(self) -> None:
        """Close the clients and their connections; deliveries in flight are dropped."""
        for task in list(self._tasks):
            task.cancel("webhook sender closing")
        for future in list(self._futures):
            future.cancel("webhook sender closing")
        if self._http1 is not None:
            http1, self._http1 = self._http1, None
            await http1.close()
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

    def send(self, url: str, body: bytes, done: Done) -> None:
        """POST ``body``; ``done(status, None)`` or ``done(None, error)`` follows (not inline)."""
        if self._http1 is None or self._session is None:
            exc = aiohttp.ClientConnectionError("webhook session is not open (app not running)")
            asyncio.get_running_loop().call_soon(done, None, exc)
            return
        if url.startswith("http://"):
            self._http1.post(url, body, done)
            return
        task = asyncio.get_running_loop().create_task(self._via_session(url, body, done))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _via_session(self, url: str, body: bytes, done: Done) -> None:
        try:
            status = await self._post_body(url, body)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            done(None, exc)
        else:
            done(status, None)

    async def post(self, url: str, payload: Mapping[str, Any]) -> int:
        """POST ``payload`` as JSON; return the status. Raises ``aiohttp.ClientError``/timeouts."""
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        def done(status: int | None, exc: BaseException | None) -> None:
            if future.done():
                return
            if exc is not None:
                future.set_exception(exc)
            else:
                future.set_result(status or 0)

        self.send(url, encode(payload), done)
        self._futures.add(future)
        try:
            return await future
        finally:
            self._futures.discard(future)

    async def _post_body(self, url: str, body: bytes) -> int:
        if self._session is None:
            raise aiohttp.ClientConnectionError("webhook session is not open (app not running)")
        async with self._session.post(url, data=body, headers=_JSON) as resp:
            await resp.read()
            return resp.status
