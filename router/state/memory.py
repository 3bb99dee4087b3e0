"""In-process stores (``storage: memory``): tokens in a 0600 file, the rest in bounded dicts.

:class:`FileTokenStore` is safe to share between the daemon and CLI commands on one host: writes
are atomic (temp file created 0600, fsync'd, ``os.replace``d, directory fsync'd) and the refresh
lock is also an ``flock`` on ``<tokens_file>.lock``, so two processes never refresh at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import secrets
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import structlog

from router.bounds import Bound
from router.context import Read
from router.errors import StorageError
from router.mtt.tokens import TokenSet
from router.state.presence_view import PresenceView
from router.state.protocols import Gathered

FILE_MODE = 0o600
LOCK_POLL_S = 0.05
LOCK_WAIT_S = 30.0
"""Longest wait for another process's refresh (its token request times out well before this)."""
MAX_CLAIMS = 100_000
"""Call claims held at once: many minutes of any real traffic; a flood pushes the oldest out."""


async def flock_exclusive(fd: int, name: str, *, wait_s: float, poll_s: float) -> None:
    """Take an exclusive ``flock`` on ``fd`` (the lock file ``name``) without ever blocking the
    loop: polled every ``poll_s``; :class:`StorageError` once ``wait_s`` has passed."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise StorageError(f"{name}: held by another process") from None
            await asyncio.sleep(poll_s)


def _log() -> Any:
    return structlog.get_logger("router.state")


class MemoryTokenStore:
    """Tokens in memory only (tests and the demo): the same contract, nothing on disk."""

    def __init__(self, tokens: TokenSet | None = None) -> None:
        self._tokens = tokens
        self._lock = asyncio.Lock()
        self.saves = 0

    def __repr__(self) -> str:
        version = None if self._tokens is None else self._tokens.version
        return f"MemoryTokenStore(version={version})"

    async def load(self) -> TokenSet | None:
        """The stored set, if any."""
        return self._tokens

    async def save(self, tokens: TokenSet, *, expected_version: int | None) -> bool:
        """Compare-and-set on the version (``None`` stores unconditionally)."""
        current = None if self._tokens is None else self._tokens.version
        if expected_version is not None and current != expected_version:
            return False
        self._tokens = tokens
        self.saves += 1
        return True

    @contextlib.asynccontextmanager
    async def refresh_lock(self) -> AsyncIterator[None]:
        """One refresh at a time in this process."""
        async with self._lock:
            yield


class FileTokenStore:
    """Tokens in a JSON file (mode 0600, atomic replace) that survives restarts."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lock = asyncio.Lock()
        self._write_lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"FileTokenStore({str(self.path)!r})"

    async def load(self) -> TokenSet | None:
        """The stored set; ``None`` if the file is missing or unreadable (logged, no contents)."""
        return await asyncio.to_thread(self._read)

    async def save(self, tokens: TokenSet, *, expected_version: int | None) -> bool:
        """Write atomically if the file's version is still ``expected_version``."""
        data = json.dumps(tokens.to_json(), indent=2).encode()
        async with self._write_lock:
            return await asyncio.to_thread(self._write, data, expected_version)

    @contextlib.asynccontextmanager
    async def refresh_lock(self) -> AsyncIterator[None]:
        """In-process lock plus an ``flock`` shared with other processes using the same file."""
        async with self._lock:
            fd = await asyncio.to_thread(self._open_lock_file)
            try:
                await self._flock(fd)
                yield
            finally:
                os.close(fd)  # closing releases the flock

    # -- file work, run in a thread ---------------------------------------------------------

    def _read(self) -> TokenSet | None:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            _log().error("tokens_file_unreadable", path=str(self.path), reason=exc.strerror)
            return None
        try:
            data = json.loads(raw)
            if not isinstance(data, dict):
                raise TypeError("not a JSON object")
            return TokenSet.from_json(data)
        except (ValueError, TypeError, KeyError) as exc:
            # Never the contents: a half-broken file may still hold a live token.
            _log().error(
                "tokens_file_unreadable",
                path=str(self.path),
                reason=f"not a token file ({type(exc).__name__})",
                hint="run `mtt-router auth login` to store new tokens",
            )
            return None

    def _current_version(self) -> int | None:
        try:
            data = json.loads(self.path.read_bytes())
            return int(data["version"]) if isinstance(data, dict) else None
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError, KeyError):
            return -1  # unreadable: only an unconditional save may replace it

    def _write(self, data: bytes, expected_version: int | None) -> bool:
        if expected_version is not None and self._current_version() != expected_version:
            return False
        directory = self.path.parent
        directory.mkdir(parents=True, exist_ok=True)
        tmp = directory / f".{self.path.name}.{secrets.token_hex(6)}.tmp"
        # Created 0600 from the first byte: there is no moment the tokens are readable by others.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
        try:
            with os.fdopen(fd, "wb") as file:
                file.write(data)
                file.flush()
                os.fsync(file.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)  # the rename itself survives a power cut
        finally:
            os.close(dir_fd)
        return True

    def _open_lock_file(self) -> int:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        return os.open(f"{self.path}.lock", os.O_RDWR | os.O_CREAT, FILE_MODE)

    async def _flock(self, fd: int) -> None:
        await flock_exclusive(fd, f"{self.path}.lock", wait_s=LOCK_WAIT_S, poll_s=LOCK_POLL_S)


class MemoryOAuthStates:
    """Single-use OAuth ``state`` values with a TTL, bounded in number.

    Worst-case memory: ``max_states`` states of 32 characters and a float (about 150 KB); only
    the admin listener's ``/oauth/start`` and ``auth login`` make them, never the public one.
    """

    def __init__(self, *, clock: Callable[[], float] = time.monotonic, max_states: int = 1000):
        self._clock = clock
        self._max = max_states
        self._expires: dict[str, float] = {}

    async def put(self, state: str, ttl_s: float) -> None:
        """Remember ``state`` until ``ttl_s`` from now (dropping expired and, if full, oldest)."""
        now = self._clock()
        for key in [k for k, exp in self._expires.items() if exp <= now]:
            del self._expires[key]
        while len(self._expires) >= self._max:
            del self._expires[next(iter(self._expires))]  # dicts keep insertion order: oldest
        self._expires[state] = now + ttl_s

    def bound(self) -> Bound:
        """States held, and the most there can be."""
        return Bound(len(self._expires), self._max)

    async def redeem(self, state: str) -> bool:
        """True once per ``state``, before it expires."""
        expires = self._expires.pop(state, None)
        return expires is not None and self._clock() < expires


class LocalClaims:
    """Claims of call ids in this process: the first claimant wins while its claim lives.

    Bounded by count and by time: claims leave when they expire (swept from the oldest, every
    claim having the same TTL in practice) and, past ``max_entries``, the oldest first. A claim
    matters only while MTT may repeat its ``trying`` (seconds); a flood of forged call ids must
    not grow it without bound. Worst-case memory: ``max_entries`` call ids of at most 256
    characters and a float, some 400 bytes each: about 40 MB at the default limit.
    """

    def __init__(
        self, max_entries: int = MAX_CLAIMS, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._clock = clock
        self.max_entries = max_entries
        # call id -> expiry, oldest claim first.
        self._expires: dict[str, float] = {}

    def __len__(self) -> int:
        return len(self._expires)

    def bound(self) -> Bound:
        """Claims held, and the most there can be."""
        return Bound(len(self._expires), self.max_entries)

    def claim(self, call_id: str, ttl_s: float) -> bool:
        """True for the first claim of ``call_id`` within ``ttl_s``, False for any other."""
        now = self._clock()
        expires = self._expires
        while expires:
            oldest = next(iter(expires))
            if expires[oldest] > now:
                break
            del expires[oldest]
        held = expires.get(call_id)
        if held is not None and held > now:
            return False
        expires.pop(call_id, None)
        expires[call_id] = now + ttl_s
        while len(expires) > self.max_entries:
            del expires[next(iter(expires))]
        return True


class MemoryCallStore(LocalClaims):
    """:class:`~router.state.protocols.CallStore` of one process: :class:`LocalClaims`.

    Memory storage keeps no client map (per-client edits need a shared storage): a read is
    answered from ``spaces`` (in-memory maps: the learned map), anything else ``None``; the claim
    and the reads cost no I/O at all.
    """

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_claims: int = MAX_CLAIMS,
        spaces: Mapping[str, LocalSpace] | None = None,
    ) -> None:
        super().__init__(max_claims, clock=clock)
        self._spaces = dict(spaces or {})

    async def claim_and_read(self, call_id: str, ttl_s: float, reads: Sequence[Read]) -> Gathered:
        """Claim ``call_id``; each read answered by its space, if this store keeps it."""
        spaces = self._spaces
        if not spaces:
            return Gathered(self.claim(call_id, ttl_s), dict.fromkeys(reads))
        values = {r: None if (s := spaces.get(r.space)) is None else s.lookup(r.key) for r in reads}
        return Gathered(self.claim(call_id, ttl_s), values)


class LocalSpace(Protocol):
    """A storage space held in this process (:class:`~router.state.learned_file.LearnedFile`)."""

    def lookup(self, key: str) -> str | None:
        """The value stored for ``key``, or ``None``: at once, no I/O."""
        ...


class MemoryPresence:
    """Who is on a call, in this process only: a bounded :class:`PresenceView`.

    Worst-case memory: that of :class:`~router.state.presence_view.PresenceView`.
    """

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.view = PresenceView(clock)

    def bound(self) -> Bound:
        """Entries held, and the most there can be."""
        return self.view.bound()

    async def set_busy(self, workplace: str, call_id: str, ttl_s: float) -> None:
        """``workplace`` is on ``call_id`` for at most ``ttl_s``."""
        self.view.set(workplace, call_id, self._clock() + ttl_s)

    async def set_free(self, workplace: str, call_id: str) -> None:
        """``call_id`` ended on ``workplace``."""
        self.view.set(workplace, call_id, None)

    def busy(self) -> frozenset[str]:
        """Workplaces on a call now; the same frozenset until something changes or expires."""
        return self.view.busy()


REROUTE_TTL_S = 2 * 3600.0
"""How long a call's re-route state (answered, hops claimed) is kept: past the longest watch
(``no_answer`` allows 10 hops of at most 600 s)."""
MAX_REROUTE_CALLS = 100_000


class MemoryReroutes:
    """:class:`~router.state.protocols.Reroutes` of one process: a bounded dict.

    The check and the claim run without an ``await`` in between, so they are one step. Bounded
    by count and by time: entries leave :data:`REROUTE_TTL_S` after their last change and, past
    ``max_calls``, the oldest first (a flood of forged ``connected`` must not grow it). Worst-case
    memory: ``max_calls`` call ids of at most 256 characters with a small list, about 40 MB.
    """

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_calls: int = MAX_REROUTE_CALLS,
        ttl_s: float = REROUTE_TTL_S,
    ) -> None:
        self._clock = clock
        self._max = max_calls
        self._ttl_s = ttl_s
        # call id -> [answered, last hop claimed, expiry], least recently changed first.
        self._calls: dict[str, list[Any]] = {}

    def bound(self) -> Bound:
        """Calls held, and the most there can be."""
        return Bound(len(self._calls), self._max)

    def _sweep(self) -> float:
        """Drop the expired entries (the oldest first); the time now."""
        now = self._clock()
        calls = self._calls
        while calls:
            oldest = next(iter(calls))
            if calls[oldest][2] > now:
                break
            del calls[oldest]
        return now

    def _touch(self, call_id: str, now: float) -> list[Any]:
        entry = self._calls.pop(call_id, None) or [False, 0, 0.0]
        entry[2] = now + self._ttl_s
        self._calls[call_id] = entry  # to the end: the dict stays in expiry order
        while len(self._calls) > self._max:
            del self._calls[next(iter(self._calls))]
        return entry

    async def mark_answered(self, call_id: str) -> None:
        """No hop of ``call_id`` may be claimed from now on."""
        self._touch(call_id, self._sweep())[0] = True

    async def claim_hop(self, call_id: str, hop: int) -> bool:
        """True once per ``hop`` of a call not marked answered (and no later hop claimed)."""
        now = self._sweep()
        current = self._calls.get(call_id)
        if current is not None and (current[0] or current[1] >= hop):
            return False
        self._touch(call_id, now)[1] = hop
        return True
