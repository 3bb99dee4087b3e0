"""Delivery of notifications to the webhook: one long-lived session with a connection pool."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import aiohttp

_JSON = {"Content-Type": "application/json"}


class WebhookSender:
    """POSTs JSON bodies like MTT does; opened and closed by the app's cleanup context."""

    def __init__(self, timeout_s: float, connections: int) -> None:
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._connections = connections
        self._session: aiohttp.ClientSession | None = None

    async def open(self) -> None:
        """Create the session (inside the running loop)."""
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._connections),
                timeout=self._timeout,
            )

    async def close(self) -> None:
        """Close the session and its connections."""
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

    async def post(self, url: str, payload: Mapping[str, Any]) -> int:
        """POST ``payload`` as JSON; return the status. Raises ``aiohttp.ClientError``/timeouts."""
        if self._session is None:
            raise aiohttp.ClientConnectionError("webhook session is not open (app not running)")
        body = json.dumps(payload, ensure_ascii=False).encode()
        async with self._session.post(url, data=body, headers=_JSON) as resp:
            await resp.read()
            return resp.status
