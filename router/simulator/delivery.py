"""Webhook delivery of the simulator's notifications: in order per call, no task per POST.

A call's next notification is sent only after the previous one was answered (``then`` runs on the
answer), so the receiver sees each call's notifications in order. :meth:`Delivery.close` makes
answers to POSTs already in flight move no call any more.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from router.simulator.config import SimConfig
from router.simulator.records import NotificationRecord
from router.simulator.webhook import WebhookSender, encode
from router.simulator.wire import vpbx_notification


class Delivery:
    """POSTs notifications to :attr:`webhook_url` and records each one and its answer."""

    def __init__(self, config: SimConfig, sender: WebhookSender) -> None:
        self.config = config
        self.webhook_url = config.webhook_url
        self.vpbx_sent: list[NotificationRecord] = []
        self.closing = False
        self._sender = sender
        self._waits: set[asyncio.Future[None]] = set()
        self._generation = 0
        """Bumped by :meth:`close`: answers to POSTs sent before it no longer move calls."""

    def send(
        self,
        into: list[NotificationRecord],
        state: str,
        payload: Any,
        then: Callable[[], None] | None = None,
        copies: int = 1,
    ) -> NotificationRecord:
        """Record (in ``into``) and POST ``payload`` ``copies`` times at once; then run ``then``."""
        if state in self.config.skip_states:
            record = NotificationRecord(state, time.monotonic(), time.time(), payload)
            record.error = "skipped"
            into.append(record)
            if then is not None:
                asyncio.get_running_loop().call_soon(self._continue, then, self._generation)
            return record
        body = encode(payload)
        first: NotificationRecord | None = None
        for _ in range(copies):
            record = NotificationRecord(state, time.monotonic(), time.time(), payload)
            into.append(record)
            self._deliver(record, body, then)
            first = first or record
            then = None
        assert first is not None
        return first

    async def notify_vpbx(self, event_type: str) -> NotificationRecord:
        """Send ``vpbxNotifications`` with ``eventType`` and wait until it was delivered."""
        record = NotificationRecord(
            event_type, time.monotonic(), time.time(), vpbx_notification(event_type)
        )
        self.vpbx_sent.append(record)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def then() -> None:
            if not done.done():
                done.set_result(None)

        self._deliver(record, encode(record.payload), then)
        self._waits.add(done)
        try:
            await done
        finally:
            self._waits.discard(done)
        return record

    def close(self) -> None:
        """Stop moving calls on answers; release whoever waits on a delivery."""
        self.closing = True
        self._generation += 1
        for wait in list(self._waits):
            if not wait.done():
                wait.set_result(None)

    def reopen(self) -> None:
        """Deliver again, with the configured URL and no records."""
        self.closing = False
        self.vpbx_sent.clear()
        self.webhook_url = self.config.webhook_url

    def _continue(self, then: Callable[[], None], generation: int) -> None:
        if not self.closing and generation == self._generation:
            then()

    def _deliver(
        self, record: NotificationRecord, body: bytes, then: Callable[[], None] | None
    ) -> None:
        """POST ``body``; record the answer, then run ``then`` (a callback: no task per POST)."""
        url = self.webhook_url
        if url is None:
            record.error = "no webhook URL set"
            if then is not None:
                asyncio.get_running_loop().call_soon(self._continue, then, self._generation)
            return
        generation = self._generation

        def answered(status: int | None, exc: BaseException | None) -> None:
            if exc is not None:
                record.error = f"{type(exc).__name__}: {exc}"
            else:
                record.status = status
            if then is not None:
                self._continue(then, generation)

        try:
            self._sender.send(url, body, answered)
        except ValueError as exc:  # a URL the sender cannot use
            asyncio.get_running_loop().call_soon(answered, None, exc)
