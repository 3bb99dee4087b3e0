"""What the PBX has: external numbers and workplaces, and which numbers the daemon parks.

Fetched at start-up (retrying in the background while MTT is unreachable or no login exists yet),
and again on ``numbersChanged`` / ``workplacesChanged``. Until the number list is known,
:attr:`Directory.numbers` is ``None`` and every incoming ``trying`` without forwarders counts as a
parked call (see :mod:`router.callmodel`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import Literal

import structlog

from router.errors import NeedsLoginError, UpstreamError
from router.metrics import Metrics
from router.mtt.client import MttClient
from router.numbers import try_normalize

log = structlog.get_logger("router.directory")

RETRY_INITIAL_S = 1.0
RETRY_MAX_S = 30.0


class Directory:
    """External numbers and workplaces as MTT last reported them."""

    def __init__(
        self,
        client: MttClient,
        metrics: Metrics,
        park: Sequence[str] | Literal["all"] = (),
    ) -> None:
        self._client = client
        self._metrics = metrics
        self._park = park
        self.numbers: frozenset[str] | None = None
        self.raw_numbers: tuple[str, ...] = ()
        self.workplaces: dict[str, str] | None = None
        self.parked: frozenset[str] = frozenset()
        self._wake = asyncio.Event()
        self._pending: set[str] = {"numbers", "workplaces"}
        self._task: asyncio.Task[None] | None = None

    @property
    def workplace_ids(self) -> frozenset[str] | None:
        """SIP IDs of the known workplaces, or ``None`` before the first successful fetch."""
        return None if self.workplaces is None else frozenset(self.workplaces)

    def start(self) -> None:
        """Start the background task that fetches and refreshes the directory."""
        self._wake.set()
        self._task = asyncio.create_task(self._run(), name="directory")

    async def close(self) -> None:
        """Stop the background task."""
        if self._task is not None:
            self._task.cancel("directory closing")
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def request_refresh(self, what: Literal["numbers", "workplaces", "all"] = "all") -> None:
        """Ask for a refresh soon (on a vpbx notification or after a login)."""
        self._pending.update(("numbers", "workplaces") if what == "all" else (what,))
        self._wake.set()

    async def _run(self) -> None:
        delay = RETRY_INITIAL_S
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                await self._refresh_pending()
            except NeedsLoginError:
                log.warning("directory_waiting_for_login")
                self._wake.clear()
                await self._sleep_or_wake(delay)
                delay = min(delay * 2, RETRY_MAX_S)
                self._wake.set()
            except UpstreamError as exc:
                log.warning("directory_refresh_failed", error=str(exc), retry_in_s=delay)
                await self._sleep_or_wake(delay)
                delay = min(delay * 2, RETRY_MAX_S)
                self._wake.set()
            else:
                delay = RETRY_INITIAL_S

    async def _sleep_or_wake(self, delay: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), delay)

    async def _refresh_pending(self) -> None:
        if "numbers" in self._pending:
            await self.refresh_numbers()
            self._pending.discard("numbers")
        if "workplaces" in self._pending:
            await self.refresh_workplaces()
            self._pending.discard("workplaces")

    async def refresh_numbers(self) -> None:
        """Fetch external numbers and park the configured ones that are not parked yet."""
        listed = await self._client.external_numbers()
        raw = tuple(n.number for n in listed)
        normal = {try_normalize(n) for n in raw}
        normal.discard(None)
        self.raw_numbers = raw
        self.numbers = frozenset(n for n in normal if n is not None)
        self._metrics.directory_size.labels("numbers").set(len(self.numbers))
        log.info("directory_numbers", count=len(self.numbers))
        await self._apply_parking()

    async def refresh_workplaces(self) -> None:
        """Fetch workplaces (SIP IDs and names)."""
        listed = await self._client.workplaces()
        self.workplaces = {w.workplace: w.name for w in listed}
        self._metrics.directory_size.labels("workplaces").set(len(self.workplaces))
        log.info("directory_workplaces", count=len(self.workplaces))

    async def _apply_parking(self) -> None:
        if self._park == "all":
            wanted = set(self.raw_numbers)
        else:
            known = {try_normalize(n): n for n in self.raw_numbers}
            wanted = set()
            for number in self._park:
                listed = known.get(try_normalize(number))
                if listed is None:
                    log.warning("park_number_not_listed", number=number)
                else:
                    wanted.add(listed)
        todo = sorted(wanted - self.parked)
        if not todo:
            return
        await self._client.set_parking(todo, True)
        self.parked = self.parked | frozenset(todo)
        self._metrics.directory_size.labels("parked").set(len(self.parked))
        log.info("numbers_parked", numbers=todo)
