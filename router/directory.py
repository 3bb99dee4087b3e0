"""What the PBX has: external numbers, workplaces and their terminals, and what the daemon parks.

Fetched at start-up (retrying in the background while MTT is unreachable or no login exists yet),
and again on ``numbersChanged`` / ``workplacesChanged`` (the terminals with the workplaces). While
the number list is unknown (not fetched yet, or an answer not read in full), :attr:`numbers` is
``None`` and only the numbers ``routing.park`` names count as parked (:attr:`park_named`; none
with ``park: all``): see :mod:`router.callmodel`. The terminals map each terminal to its workplace
(:attr:`terminal_workplaces`): a leg's ``accountId`` is a terminal's, not always a workplace's.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
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
MIN_INTERVAL_S = 5.0
"""Refreshes are coalesced: at most one round of fetches per this long, however many
``numbersChanged``/``workplacesChanged`` arrive (anyone may post them)."""
KINDS = ("numbers", "workplaces", "terminals")
"""What the directory fetches, in this order, and shares under these names."""
NOT_FETCHED = "not fetched yet"


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
        *,
        min_interval_s: float = MIN_INTERVAL_S,
    ) -> None:
        self._client = client
        self._metrics = metrics
        self._park = park
        self._shared = shared
        self._min_interval_s = min_interval_s
        self.rounds = 0
        """Rounds of fetches started (each fetches what was asked for since the last one)."""
        self._watch_task: asyncio.Task[None] | None = None
        self.numbers: frozenset[str] | None = None
        """The account's external numbers, normalised; ``None`` while unknown."""
        self.numbers_unknown: str | None = NOT_FETCHED
        """Why :attr:`numbers` is ``None`` (``None`` once known)."""
        self.raw_numbers: tuple[str, ...] = ()
        self.park_named: frozenset[str] = (
            frozenset()
            if park == "all"
            else frozenset(n for n in (try_normalize(p) for p in park) if n is not None)
        )
        """The numbers ``routing.park`` names, normalised: parked while the list is unknown."""
        self.workplaces: dict[str, str] | None = None
        self._workplace_ids: frozenset[str] = frozenset()
        self.terminals: dict[str, str] | None = None
        """Terminal SIP ID -> workplace, as ``terminalsInfo`` lists them; ``None`` before."""
        self._terminal_workplaces: Mapping[str, str] = MappingProxyType({})
        self.listeners: list[Callable[[], None]] = []
        """Called after every change of the workplace list."""
        self.parked: frozenset[str] = frozenset()
        self._wake = asyncio.Event()
        self._pending: set[str] = set(KINDS)
        self._task: asyncio.Task[None] | None = None

    @property
    def workplace_ids(self) -> frozenset[str] | None:
        """SIP IDs of the known workplaces, or ``None`` before the first successful fetch."""
        return None if self.workplaces is None else self._workplace_ids

    @property
    def terminal_workplaces(self) -> Mapping[str, str]:
        """Terminal SIP ID -> its workplace (empty before the first fetch)."""
        return self._terminal_workplaces

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
        data = snapshot.data
        if kind == "numbers" and isinstance(data, list):
            self._set_numbers(tuple(str(n) for n in data))
        elif kind == "numbers" and isinstance(data, dict) and isinstance(data.get("numbers"), list):
            # A list the sibling could not read in full: unknown here too.
            self._set_numbers(tuple(str(n) for n in data["numbers"]), str(data.get("unread")))
        elif kind == "workplaces" and isinstance(data, dict):
            self._set_workplaces({str(k): str(v) for k, v in data.items()})
        elif kind == "terminals" and isinstance(data, dict):
            self._set_terminals({str(k): str(v) for k, v in data.items()})

    async def _share(self, kind: str, data: Any) -> None:
        if self._shared is None:
            return
        try:
            await self._shared.save(kind, data)
        except StorageError as exc:
            log.warning("directory_share_failed", kind=kind, error=str(exc))

    def request_refresh(self, what: Literal["numbers", "workplaces", "all"] = "all") -> None:
        """Ask for a refresh soon (on a vpbx notification or after a login)."""
        if what == "all":
            self._pending.update(KINDS)
        else:
            # A workplace's terminals change with the workplaces.
            self._pending.update(("workplaces", "terminals") if what == "workplaces" else (what,))
        self._wake.set()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        delay = RETRY_INITIAL_S
        last_round = -math.inf
        while True:
            await self._wake.wait()
            # Coalesce a burst: wait out the interval since the last round; what is asked for
            # meanwhile joins the pending kinds, and the round after the wait fetches them all.
            # The wake is cleared only after the wait, so a change announced during the round
            # (its kind re-added to the pending set) always gets a round of its own.
            if (wait := last_round + self._min_interval_s - loop.time()) > 0:
                await asyncio.sleep(wait)
            self._wake.clear()
            # The first round (the load at start-up) does not hold back the first notification.
            last_round = loop.time() if self.rounds else -math.inf
            self.rounds += 1
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
            ("terminals", self.refresh_terminals),
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
        try:
            listed = await self._client.read_numbers()
        except Exception as exc:
            if self.numbers_unknown is not None and self.numbers_unknown.startswith(NOT_FETCHED):
                self.numbers_unknown = f"{NOT_FETCHED} ({type(exc).__name__}: {exc})"
            raise
        unread = "; ".join(listed.unread) if listed.unread else None
        self._set_numbers(tuple(n.number for n in listed.items), unread)
        raw = list(self.raw_numbers)
        await self._share("numbers", raw if unread is None else {"numbers": raw, "unread": unread})
        await self._apply_parking()

    def _set_numbers(self, raw: tuple[str, ...], unread: str | None = None) -> None:
        normal = {try_normalize(n) for n in raw}
        self.raw_numbers = raw
        if unread is None:
            self.numbers = frozenset(n for n in normal if n is not None)
            self.numbers_unknown = None
            self._metrics.directory_size.labels("numbers").set(len(self.numbers))
            log.info("directory_numbers", count=len(self.numbers))
            return
        # Never guess which calls are parked from a list that may be incomplete.
        self.numbers = None
        self.numbers_unknown = f"MTT's answer was not read in full: {unread}"
        log.warning(
            "directory_numbers_unknown",
            read=len(raw),
            unread=unread,
            parked_meanwhile=sorted(self.park_named),
        )

    async def refresh_workplaces(self) -> None:
        """Fetch workplaces (SIP IDs and names)."""
        listed = await self._client.workplaces()
        self._set_workplaces({w.workplace: w.name for w in listed})
        await self._share("workplaces", self.workplaces)

    async def refresh_terminals(self) -> None:
        """Fetch the terminals and the workplace each belongs to."""
        listed = await self._client.terminals()
        self._set_terminals({t.terminal: t.workplace for t in listed if t.workplace is not None})
        await self._share("terminals", self.terminals)

    def _set_terminals(self, terminals: dict[str, str]) -> None:
        self.terminals = terminals
        self._terminal_workplaces = MappingProxyType(terminals)
        self._metrics.directory_size.labels("terminals").set(len(terminals))
        log.info("directory_terminals", count=len(terminals))

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
