"""Forged ``trying`` notifications, every field at the longest the daemon accepts, and a fast
poster for them (a pool of keep-alive connections, many POSTs at once).

Each has a call id and a caller number of its own: ids, numbers and tags of
:data:`~router.events.MAX_ID_CHARS` characters, names, reasons and the record URL of
:data:`~router.events.MAX_TEXT_CHARS` (names in Cyrillic, like MTT's), to one of the account's
parked numbers. Every other one carries :data:`~router.events.MAX_FORWARDERS` forwarders of the
longest on both sides: the most expensive body to parse, but a forwarded leg is never a parked
call, so the daemon only audits it; the others are parked calls, each a decision (or shed over
``server.max_inflight``).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

from router.events import MAX_FORWARDERS, MAX_ID_CHARS, MAX_TEXT_CHARS

CONCURRENCY = 64
"""POSTs in flight at once, one per keep-alive connection."""


def _fill(prefix: str, length: int, pad: str = "x") -> str:
    return (prefix + pad * length)[:length]


_NAME = _fill("Поддельный абонент ", MAX_TEXT_CHARS, "Я")
_TEXT = _fill("forged ", MAX_TEXT_CHARS)


def forged_trying(i: int, callee: str, *, forwarded: bool) -> dict[str, Any]:
    """The ``i``-th forged ``trying`` to ``callee``: a call id and a caller of its own, every
    field at its longest; ``forwarded`` adds the most forwarders there may be to both sides."""
    forwarders = (
        [_fill(f"{i}-{k}-", MAX_ID_CHARS, "7") for k in range(MAX_FORWARDERS)] if forwarded else []
    )

    def party(number: str, side: str) -> dict[str, Any]:
        return {
            "accountId": _fill(f"{side}-account-{i}-", MAX_ID_CHARS),
            "centrexId": _fill(f"{side}-centrex-", MAX_ID_CHARS),
            "displayId": _fill(f"{side}-display-{i}-", MAX_ID_CHARS),
            "displayName": _NAME,
            "forwarderList": forwarders,
            "id": number,
        }

    return {
        "event": "callNotifications",
        "result": {
            "callInfo": {
                "accountId": _fill(f"account-{i}-", MAX_ID_CHARS),
                "call": {
                    "id": _fill(f"forged-{i:09d}-", MAX_ID_CHARS),
                    "tag": _fill(f"tag-{i}-", MAX_ID_CHARS),
                },
                # A caller number of the longest: digits, so it goes through normalisation.
                "callee": party(callee, "callee"),
                "caller": party(_fill(f"7{i:010d}", MAX_ID_CHARS, "0"), "caller"),
                "duration": 0,
                "reason": _TEXT,
                "reasonCode": _fill("code-", MAX_ID_CHARS),
                "startTime": _fill("2024-01-01 00:00:00 ", MAX_ID_CHARS),
                "state": "trying",
                "transportId": _fill(f"transport-{i}-", MAX_ID_CHARS),
                "type": "incoming",
                "urlRecord": _TEXT,
            }
        },
    }


def forged_bodies(count: int, callees: tuple[str, ...]) -> Iterator[bytes]:
    """``count`` encoded forged notifications, made as they are needed; odd ones forwarded
    (:func:`parked_count` of them are parked calls)."""
    for i in range(count):
        yield orjson.dumps(forged_trying(i, callees[i % len(callees)], forwarded=i % 2 == 1))


@dataclass
class Posted:
    """What the flood's POSTs got back."""

    sent: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        """Plain JSON."""
        rate = self.sent / self.seconds if self.seconds > 0 else None
        return {
            "sent": self.sent,
            "seconds": round(self.seconds, 2),
            "posts_per_s": None if rate is None else round(rate),
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "errors": dict(self.errors),
        }


async def post_all(url: str, bodies: Iterator[bytes], concurrency: int = CONCURRENCY) -> Posted:
    """POST every body to ``url`` over ``concurrency`` keep-alive connections; the connections
    are closed before returning."""
    posted = Posted()
    headers = {"Content-Type": "application/json"}
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    timeout = aiohttp.ClientTimeout(total=30)

    async def worker(http: aiohttp.ClientSession) -> None:
        for body in bodies:  # one shared iterator: each body is taken once
            posted.sent += 1
            try:
                async with http.post(url, data=body, headers=headers) as resp:
                    await resp.read()
                    posted.statuses[resp.status] += 1
            except (aiohttp.ClientError, TimeoutError) as exc:
                posted.errors[type(exc).__name__] += 1

    start = time.monotonic()
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
        await asyncio.gather(*(worker(http) for _ in range(concurrency)))
    posted.seconds = time.monotonic() - start
    return posted


def parked_count(count: int) -> int:
    """How many of the first ``count`` forged notifications are parked calls (the even ones)."""
    return (count + 1) // 2
