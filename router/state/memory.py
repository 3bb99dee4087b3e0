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
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import structlog

from router.context import Read
from router.errors import StorageError
from router.mtt.tokens import TokenSet
from router.state.protocols import Gathered

FILE_MODE = 0o600
LOCK_POLL_S = 0.05
LOCK_WAIT_S = 30.0
"""Longest wait for another process's refresh (its token request times out well before this)."""


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
        deadline = time.monotonic() + LOCK_WAIT_S
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # never blocks the loop
                return
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise StorageError(f"{self.path}.lock: held by another process") from None
                await asyncio.sleep(LOCK_POLL_S)


class MemoryOAuthStates:
    """Single-use OAuth ``state`` values with a TTL, bounded in number."""

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

    async def redeem(self, state: str) -> bool:
        """True once per ``state``, before it expires."""
        expires = self._expires.pop(state, None)
        return expires is not None and self._clock() < expires


class MemoryCallStore:
    """First claimant of a call id wins; expired claims are pruned so the dict stays bounded.

    Memory storage keeps no client map (per-client edits need a shared storage), so every read is
    answered ``None`` at once: the claim and the reads cost no I/O at all.
    """

    def __init__(
        self, *, clock: Callable[[], float] = time.monotonic, prune_every_s: float = 60.0
    ) -> None:
        self._clock = clock
        self._prune_every_s = prune_every_s
        self._next_prune = clock() + prune_every_s
        self._expires: dict[str, float] = {}

    def __len__(self) -> int:
        return len(self._expires)

    async def claim_and_read(self, call_id: str, ttl_s: float, reads: Sequence[Read]) -> Gathered:
        """Claim ``call_id``; nothing is stored for any read."""
        return Gathered(self.claim(call_id, ttl_s), dict.fromkeys(reads))

    def claim(self, call_id: str, ttl_s: float) -> bool:
        """True for the first claim of ``call_id`` within ``ttl_s``."""
        now = self._clock()
        if now >= self._next_prune:
            self._expires = {k: exp for k, exp in self._expires.items() if exp > now}
            self._next_prune = now + self._prune_every_s
        expires = self._expires.get(call_id)
        if expires is not None and expires > now:
            return False
        self._expires[call_id] = now + ttl_s
        return True


class MemoryPresence:
    """Workplace -> calls it is on, each with a TTL safety net (a ``finished`` may never come)."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._calls: dict[str, dict[str, float]] = {}
        self._busy: frozenset[str] | None = None
        self._valid_until = float("inf")

    async def set_busy(self, workplace: str, call_id: str, ttl_s: float) -> None:
        """``workplace`` is on ``call_id`` for at most ``ttl_s``."""
        self._calls.setdefault(workplace, {})[call_id] = self._clock() + ttl_s
        self._busy = None

    async def set_free(self, workplace: str, call_id: str) -> None:
        """``call_id`` ended on ``workplace``."""
        calls = self._calls.get(workplace)
        if calls is not None and calls.pop(call_id, None) is not None:
            if not calls:
                del self._calls[workplace]
            self._busy = None

    def busy(self) -> frozenset[str]:
        """Workplaces on a call now; the same frozenset until something changes or expires."""
        now = self._clock()
        if self._busy is None or now >= self._valid_until:
            soonest = float("inf")
            for workplace in list(self._calls):
                calls = {c: exp for c, exp in self._calls[workplace].items() if exp > now}
                if calls:
                    self._calls[workplace] = calls
                    soonest = min(soonest, *calls.values())
                else:
                    del self._calls[workplace]
            self._busy = frozenset(self._calls)
            self._valid_until = soonest
        return self._busy
