"""What the PBX has: external numbers and workplaces, and which numbers the daemon parks.

Fetched at start-up (retrying in the background while MTT is unreachable or no login exists yet),
and again on ``numbersChanged`` / ``workplacesChanged``. Until the number list is known,
:attr:`Directory.numbers` is ``None`` and every incoming ``trying`` without forwarders counts as a
parked call (see :mod:`router.callmodel`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from typing import Any, Literal

import structlog

from router.errors import NeedsLoginError, StorageError, UpstreamError
from router.metrics import Metrics
from router.mtt.client import MttClient
from router.numbers import try_normalize
from router.state.protocols import SharedDirectory

log = structlog.get_logger("router.directory")

RETRY_INITIAL_S = 1.0
RETRY_MAX_S = 30.0


class Directory:
    """External numbers and workplaces as MTT last reported them.

    With a ``shared`` store (Redis), what one replica fetches is saved there and adopted by the
    others: a ``numbersChanged`` notification reaches only one replica behind a load balancer.
    """

    def __init__(
        self,
        client: MttClient,
        metrics: Metrics,
        park: Sequence[str] | Literal["all"] = (),
        shared: SharedDirectory | None = None,
    ) -> None:
        self._client = client
        self._metrics = metrics
        self._park = park
        self._shared = shared
        self._watch_task: asyncio.Task[None] | None = None
        self.numbers: frozenset[str] | None = None
        self.raw_numbers: tuple[str, ...] = ()
        self.workplaces: dict[str, str] | None = None
        self._workplace_ids: frozenset[str] = frozenset()
        self.listeners: list[Callable[[], None]] = []
        """Called after every change of the workplace list."""
        self.parked: frozenset[str] = frozenset()
        self._wake = asyncio.Event()
        self._pending: set[str] = {"numbers", "workplaces"}
        self._task: asyncio.Task[None] | None = None

    @property
    def workplace_ids(self) -> frozenset[str] | None:
        """SIP IDs of the known workplaces, or ``None`` before the first successful fetch."""
        return None if self.workplaces is None else self._workplace_ids

    def start(self) -> None:
        """Start the background tasks that fetch, refresh (and share) the directory."""
        self._wake.set()
        self._task = asyncio.create_task(self._run(), name="directory")
        if self._shared is not None:
            self._watch_task = asyncio.create_task(
                self._shared.watch(self._adopt), name="directory-watch"
            )

    async def close(self) -> None:
        """Stop the background tasks."""
        for task in (self._task, self._watch_task):
            if task is not None:
                task.cancel("directory closing")
                # An error that ended the task early was logged; it must not break shutdown.
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        self._task = self._watch_task = None

    async def _adopt(self, kind: str, version: int) -> None:
        """Take what a sibling replica fetched (or what we saved ourselves: harmless)."""
        assert self._shared is not None
        snapshot = await self._shared.load(kind)
        if snapshot is None:
            return
        if kind == "numbers" and isinstance(snapshot.data, list):
            self._set_numbers(tuple(str(n) for n in snapshot.data))
        elif kind == "workplaces" and isinstance(snapshot.data, dict):
            self._set_workplaces({str(k): str(v) for k, v in snapshot.data.items()})

    async def _share(self, kind: str, data: Any) -> None:
        if self._shared is None:
            return
        try:
            await self._shared.save(kind, data)
        except StorageError as exc:
            log.warning("directory_share_failed", kind=kind, error=str(exc))

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
            except UpstreamError as exc:
                log.warning("directory_refresh_failed", error=str(exc), retry_in_s=delay)
            except Exception as exc:  # the directory must outlive any surprise (e.g. StorageError)
                log.error("directory_refresh_crashed", error=repr(exc), retry_in_s=delay)
            else:
                delay = RETRY_INITIAL_S
                continue
            await self._sleep_or_wake(delay)
            delay = min(delay * 2, RETRY_MAX_S)
            self._wake.set()

    async def _sleep_or_wake(self, delay: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), delay)

    async def _refresh_pending(self) -> None:
        # Take a kind off the list *before* fetching it: a notification that arrives during the
        # fetch adds it back, and the next round fetches again.
        for kind, refresh in (
            ("numbers", self.refresh_numbers),
            ("workplaces", self.refresh_workplaces),
        ):
            if kind in self._pending:
                self._pending.discard(kind)
                try:
                    await refresh()
                except BaseException:
                    self._pending.add(kind)
                    raise

    async def refresh_numbers(self) -> None:
        """Fetch external numbers and park the configured ones that are not parked yet."""
        listed = await self._client.external_numbers()
        self._set_numbers(tuple(n.number for n in listed))
        await self._share("numbers", list(self.raw_numbers))
        await self._apply_parking()

    def _set_numbers(self, raw: tuple[str, ...]) -> None:
        normal = {try_normalize(n) for n in raw}
        self.raw_numbers = raw
        self.numbers = frozenset(n for n in normal if n is not None)
        self._metrics.directory_size.labels("numbers").set(len(self.numbers))
        log.info("directory_numbers", count=len(self.numbers))

    async def refresh_workplaces(self) -> None:
        """Fetch workplaces (SIP IDs and names)."""
        listed = await self._client.workplaces()
        self._set_workplaces({w.workplace: w.name for w in listed})
        await self._share("workplaces", self.workplaces)

    def _set_workplaces(self, workplaces: dict[str, str]) -> None:
        self.workplaces = workplaces
        self._workplace_ids = frozenset(workplaces)
        self._metrics.directory_size.labels("workplaces").set(len(workplaces))
        for listener in self.listeners:
            listener()
        log.info("directory_workplaces", count=len(workplaces))

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
