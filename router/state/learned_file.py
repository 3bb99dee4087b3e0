"""What rules ``learn`` remembered, with ``storage: memory``: a bounded map kept in a 0600 file.

The map (normalised caller number -> manager id, learned at, expires at) lives in memory, so a
decision reads it with no I/O at all (:meth:`LearnedFile.lookup`, through
:class:`~router.state.memory.MemoryCallStore`). It is persisted to ``<tokens_file>.learned.json``:

- written in the background, at most once per :data:`FLUSH_S` while something new was learned
  (never per call), and once more when the daemon stops; each write is atomic (a temp file
  created 0600, fsync'd, ``os.replace``d, the directory fsync'd) and holds an ``flock`` on
  ``<file>.lock`` from the read that precedes it to the rename;
- read again whenever another process replaced it (``mtt-router clients forget``), checked
  every :data:`POLL_S`: the file's entries, plus what this process learned and has not written
  yet, become the map. A forgotten number thus stops routing within about :data:`POLL_S`.

Deleting the file forgets everything (what was learned since the last write excepted).

File format (JSON): ``{"version": 1, "entries": [[number, manager, learned_at, expires_at],
...]}``, oldest lesson first, times in seconds since the epoch; expired entries are left out.

Bounded: at most :data:`MAX_LEARNED` entries, the oldest lesson out first (expired ones go
first). Worst-case memory: about 250 bytes an entry (a key of up to 15 digits, a short manager
id, a 3-tuple of a string and two floats, the dict slot), some 25 MB at the default limit,
plus as much again for the copy taken while a write serialises it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import orjson
import structlog

from router.bounds import Bound
from router.errors import StorageError
from router.log_limit import LineLimiter
from router.state.memory import flock_exclusive
from router.state.protocols import Learned

log = structlog.get_logger("router.state")

MAX_LEARNED = 100_000
"""Entries held at most: far more callers than a sales office talks to in ``ttl_days``."""
FLUSH_S = 5.0
"""The longest a lesson waits in memory before it is written (a crash loses at most this)."""
POLL_S = 1.0
"""How often the daemon checks whether another process replaced the file."""
FILE_MODE = 0o600
LOCK_POLL_S = 0.02
LOCK_WAIT_S = 10.0
FORMAT_VERSION = 1

Entry = tuple[str, float, float]
"""``(manager, learned_at, expires_at)``."""
Stamp = tuple[int, int, int]
"""``(inode, mtime_ns, size)`` of the file as last read or written."""


def learned_path(tokens_file: str | os.PathLike[str]) -> Path:
    """Where memory storage keeps the learned map: beside the tokens file."""
    return Path(f"{os.fspath(tokens_file)}.learned.json")


class LearnedFile:
    """:class:`~router.state.protocols.LearnedStore` of one host (see the module docstring).

    The daemon calls :meth:`start` (the background writer and watcher) and :meth:`aclose`
    (the last write); a command opens it, calls :meth:`get` or :meth:`forget`, and closes it.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        max_entries: int = MAX_LEARNED,
        clock: Callable[[], float] = time.time,
        flush_s: float = FLUSH_S,
        poll_s: float = POLL_S,
    ) -> None:
        self.path = Path(path)
        self.max_entries = max_entries
        self._clock = clock
        self._flush_s = flush_s
        self._poll_s = poll_s
        self._entries: dict[str, Entry] = {}  # oldest lesson first
        self._dirty: dict[str, Entry] = {}  # learned here, not yet written
        self._dirty_since = 0.0  # time.monotonic() of the oldest unwritten lesson
        self._stamp: Stamp | None = None
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._errors = LineLimiter(60.0)

    def __repr__(self) -> str:
        return f"LearnedFile({str(self.path)!r}, entries={len(self._entries)})"

    def __len__(self) -> int:
        return len(self._entries)

    def bound(self) -> Bound:
        """Entries held, and the most there can be."""
        return Bound(len(self._entries), self.max_entries)

    # -- the decision's read: no I/O ----------------------------------------------------------

    def lookup(self, number: str) -> str | None:
        """The manager learned for the normalised ``number``, unless expired."""
        entry = self._entries.get(number)
        if entry is None or entry[2] <= self._clock():
            return None
        return entry[0]

    # -- LearnedStore ---------------------------------------------------------------------

    def remember(self, number: str, manager: str, ttl_s: float) -> None:
        """Learn it now; written within :data:`FLUSH_S` (by the task :meth:`start` runs)."""
        now = self._clock()
        entry = (sys.intern(manager), now, now + ttl_s)
        self._entries.pop(number, None)
        self._entries[number] = entry
        if not self._dirty:
            self._dirty_since = time.monotonic()
        self._dirty.pop(number, None)
        self._dirty[number] = entry
        self._trim(now)

    async def get(self, number: str) -> Learned | None:
        """The live entry of ``number``, the file read again first if another process wrote."""
        async with self._lock:
            await self._sync()
        entry = self._entries.get(number)
        if entry is None or entry[2] <= self._clock():
            return None
        return Learned(*entry)

    async def forget(self, number: str) -> bool:
        """Drop ``number`` and write the file now; True if it had a live entry."""
        async with self._lock, self._flocked():
            await self._sync()
            entry = self._entries.pop(number, None)
            self._dirty.pop(number, None)
            if entry is None:
                return False
            await self._write_now()
        return entry[2] > self._clock()

    # -- lifecycle ------------------------------------------------------------------------

    def load(self) -> None:
        """Read the file (blocking: call it before serving, or in a thread)."""
        got = _read_if_changed(self.path, None, self._clock())
        if got is not None:
            self._stamp, self._entries = got
            self._trim(self._clock())

    def start(self) -> None:
        """Write lessons and follow the file in the background (the daemon only)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def flush(self) -> None:
        """Write what was learned and not yet written (merged with the file as it is now)."""
        async with self._lock, self._flocked():
            await self._sync()
            if self._dirty:
                await self._write_now()

    async def aclose(self) -> None:
        """Stop the background task and write what is left."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._dirty:
            try:
                await self.flush()
            except (OSError, StorageError) as exc:
                log.error("learned_file_not_written", path=str(self.path), error=str(exc))

    # -- internals ------------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._poll_s)
            try:
                if self._dirty and time.monotonic() - self._dirty_since >= self._flush_s:
                    await self.flush()
                else:
                    async with self._lock:
                        await self._sync()
            except (OSError, StorageError) as exc:
                if (held := self._errors.allow(time.monotonic())) is not None:
                    log.error(
                        "learned_file_failed", path=str(self.path), error=str(exc), held_back=held
                    )

    async def _sync(self) -> None:
        """Adopt the file when another process replaced it, keeping what is not written yet."""
        got = await asyncio.to_thread(_read_if_changed, self.path, self._stamp, self._clock())
        if got is None:
            return
        self._stamp, entries = got
        for number, entry in self._dirty.items():
            entries.pop(number, None)
            entries[number] = entry
        self._entries = entries
        self._trim(self._clock())

    async def _write_now(self) -> None:
        items = list(self._entries.items())
        written, self._dirty = self._dirty, {}
        try:
            self._stamp = await asyncio.to_thread(_write, self.path, items, self._clock())
        except BaseException:
            for number, entry in written.items():  # written again next time
                self._dirty.setdefault(number, entry)
            raise

    def _trim(self, now: float) -> None:
        entries = self._entries
        while entries:
            oldest = next(iter(entries))
            if len(entries) <= self.max_entries and entries[oldest][2] > now:
                break
            del entries[oldest]
            self._dirty.pop(oldest, None)

    @contextlib.asynccontextmanager
    async def _flocked(self) -> AsyncIterator[None]:
        """An ``flock`` on ``<file>.lock``, shared with other processes using the same file."""
        fd = await asyncio.to_thread(_open_lock_file, self.path)
        try:
            await flock_exclusive(fd, f"{self.path}.lock", wait_s=LOCK_WAIT_S, poll_s=LOCK_POLL_S)
            yield
        finally:
            os.close(fd)  # closing releases the flock


# -- file work, run in a thread ---------------------------------------------------------------


def _stamp_of(stat: os.stat_result) -> Stamp:
    return (stat.st_ino, stat.st_mtime_ns, stat.st_size)


def _read_if_changed(
    path: Path, known: Stamp | None, now: float
) -> tuple[Stamp | None, dict[str, Entry]] | None:
    """``(stamp, entries)`` when the file differs from ``known`` (gone: no entries), else None.

    An unreadable file is logged and adopted as it is (no entries from it): the next write
    replaces it.
    """
    try:
        stat = os.stat(path)
    except FileNotFoundError:
        return None if known is None else (None, {})
    stamp = _stamp_of(stat)
    if stamp == known:
        return None
    try:
        return stamp, _parse(orjson.loads(path.read_bytes()), now)
    except FileNotFoundError:
        return None if known is None else (None, {})
    except (OSError, orjson.JSONDecodeError, TypeError, ValueError) as exc:
        log.error(
            "learned_file_unreadable",
            path=str(path),
            reason=f"{type(exc).__name__}: {exc}",
            hint="the daemon replaces it with what it learns; nothing in it is used",
        )
        return stamp, {}


def _parse(data: Any, now: float) -> dict[str, Entry]:
    if not isinstance(data, dict) or data.get("version") != FORMAT_VERSION:
        raise ValueError(f"not a learned file of format version {FORMAT_VERSION}")
    rows = data.get("entries")
    if not isinstance(rows, list):
        raise ValueError("no entries list")
    entries: dict[str, Entry] = {}
    for row in rows:
        if not (isinstance(row, list) and len(row) == 4):
            continue
        number, manager, learned_at, expires_at = row
        if (
            isinstance(number, str)
            and number.isdigit()
            and isinstance(manager, str)
            and manager
            and not any(c.isspace() for c in manager)
            and isinstance(learned_at, int | float)
            and isinstance(expires_at, int | float)
            and expires_at > now
        ):
            entries.pop(number, None)
            entries[number] = (sys.intern(manager), float(learned_at), float(expires_at))
    return entries


def _write(path: Path, items: list[tuple[str, Entry]], now: float) -> Stamp:
    rows = [[n, e[0], round(e[1], 3), round(e[2], 3)] for n, e in items if e[2] > now]
    data = orjson.dumps({"version": FORMAT_VERSION, "entries": rows})
    directory = path.parent
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / f".{path.name}.{secrets.token_hex(6)}.tmp"
    # Created 0600 from the first byte: callers' numbers are personal data.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return _stamp_of(os.stat(path))


def _open_lock_file(path: Path) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    return os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT, FILE_MODE)
