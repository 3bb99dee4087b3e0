"""``log.capture``: every POST to ``P/events`` as received, one JSON line each, off the hot path.

A line::

    {"received_at": "2027-01-11T07:00:00.123456+00:00", "received_at_s": 1799650800.123456,
     "peer": "203.0.113.7", "status": 200, "size": 312, "body": "{\\"event\\": ...}"}

``body`` is the body as received: a string when it is UTF-8, else base64 with
``"body_encoding": "base64"``; ``null`` when it was never read (413 on its declared length, an
unreadable encoding), ``size`` then being the declared length. Refused bodies (400, 413) are
captured with their status; the OAuth callback never is (only the events route calls :meth:`add`).

The request handler only appends to a bounded in-memory queue (:meth:`CaptureWriter.add`, well
under a microsecond); a background thread formats, writes and flushes the queue in batches every
:data:`FLUSH_INTERVAL_S`. A thread rather than the loop: a disk that stalls (a full or remote file
system) stalls the thread, never the event loop that answers MTT, and formatting leaves the loop
too. A full queue or a failing disk drops lines, counts them in
``mtt_router_capture_dropped_total`` and says so in at most one log line per second.

The file is created mode 0600 (it holds callers' numbers), also after rotation: when it passes
``max_bytes`` it becomes ``NAME.1`` (``NAME.1`` becomes ``NAME.2`` ...), ``keep`` rotated files are
kept and the oldest is deleted. :func:`read_capture` reads the lines back (``mtt-router replay``).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import os
import stat
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import orjson
import structlog

from router.bounds import Bound

log = structlog.get_logger("router.capture")

FLUSH_INTERVAL_S = 0.1
"""How often the writer wakes to write what was queued (the handler never wakes it)."""
QUEUE_MAX_LINES = 20_000
"""Lines waiting at most: over a minute of MTT's peak traffic, a few MB of small bodies."""
QUEUE_MAX_BYTES = 32 * 1024 * 1024
"""Bodies waiting at most (a flood of 1 MiB bodies must not grow memory without bound)."""
RETRY_OPEN_S = 1.0
"""After a failed open or write, the writer tries the file again this much later."""
DROP_LOG_INTERVAL_S = 1.0
FILE_MODE = 0o600


class DropCounter(Protocol):
    """``mtt_router_capture_dropped_total`` (a prometheus Counter is one)."""

    def inc(self, amount: float = 1) -> None:
        """Count ``amount`` more dropped lines."""
        ...


class Captured(NamedTuple):
    """One POST as received; formatted into a line by the writer thread."""

    received_at_s: float
    peer: str | None
    status: int
    body: bytes | None
    size: int


def capture_line(item: Captured) -> bytes:
    """The JSON line (with its newline) for one captured POST."""
    line: dict[str, object] = {
        "received_at": datetime.fromtimestamp(item.received_at_s, UTC).isoformat(),
        "received_at_s": round(item.received_at_s, 6),
        "peer": item.peer,
        "status": item.status,
        "size": item.size,
    }
    body = item.body
    if body is None:
        line["body"] = None
    else:
        try:
            line["body"] = body.decode("utf-8")
        except UnicodeDecodeError:
            line["body"] = base64.b64encode(body).decode("ascii")
            line["body_encoding"] = "base64"
    return orjson.dumps(line, option=orjson.OPT_APPEND_NEWLINE)


class CaptureWriter:
    """The capture file and the thread writing it; :meth:`add` is the only hot-path call.

    Worst-case memory of the queue: :data:`QUEUE_MAX_LINES` lines and :data:`QUEUE_MAX_BYTES`
    of bodies, whichever comes first (past either, a line is dropped and counted).
    """

    def __init__(
        self,
        path: str | Path,
        *,
        max_bytes: int,
        keep: int,
        dropped: DropCounter,
        queue_max_lines: int = QUEUE_MAX_LINES,
        queue_max_bytes: int = QUEUE_MAX_BYTES,
        flush_interval_s: float = FLUSH_INTERVAL_S,
    ) -> None:
        self.path = Path(path)
        self._max_bytes = max_bytes
        self._keep = keep
        self._dropped = dropped
        self._max_lines = queue_max_lines
        self._max_queued_bytes = queue_max_bytes
        self._interval_s = flush_interval_s
        # deque append/popleft are atomic: the loop appends, the writer thread pops. Bytes are
        # counted in two totals, each written by one thread only, so no lock is needed.
        self._queue: deque[Captured] = deque()
        self._bytes_in = 0
        self._bytes_out = 0
        self._closed = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._fd: int | None = None
        self._size = 0
        self._retry_at = 0.0
        self._drop_lock = threading.Lock()
        self._drops_held = 0
        self._drop_reason = ""
        self._drop_logged_at = float("-inf")

    # -- the hot path (event loop) ------------------------------------------------------------

    def add(
        self, received_at_s: float, peer: str | None, status: int, body: bytes | None, size: int = 0
    ) -> None:
        """Queue one POST (``size``: its declared length when ``body`` was not read); never
        blocks: a full queue drops the line and counts it."""
        length = len(body) if body is not None else 0
        queue = self._queue
        if (
            self._closed
            or len(queue) >= self._max_lines
            or self._bytes_in - self._bytes_out + length > self._max_queued_bytes
        ):
            self._drop(1, "queue full")
            return
        self._bytes_in += length
        queue.append(Captured(received_at_s, peer, status, body, length or size))

    # -- life cycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Start the writer thread (the file is opened by it, so a slow disk never blocks)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="capture-writer", daemon=True)
            self._thread.start()

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop taking lines, write what is queued, close the file (blocks up to ``timeout_s``)."""
        self._closed = True
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
        else:
            self._write_queued()
            self._close_file()
        self._report_drops(force=True)

    async def aclose(self) -> None:
        """:meth:`close` off the event loop (the daemon's shutdown: the queue is flushed)."""
        await asyncio.to_thread(self.close)

    @property
    def queued(self) -> int:
        """Lines waiting for the writer."""
        return len(self._queue)

    def bound(self) -> Bound:
        """Lines waiting for the writer, and the most there can be."""
        return Bound(len(self._queue), self._max_lines)

    # -- the writer thread --------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            self._write_queued()
        self._write_queued()  # what arrived before close(): flushed on shutdown
        self._close_file()

    def _write_queued(self) -> None:
        queue = self._queue
        chunk: list[bytes] = []
        chunk_bytes = 0
        while True:
            try:
                item = queue.popleft()
            except IndexError:
                break
            if item.body is not None:
                self._bytes_out += len(item.body)
            line = capture_line(item)
            chunk.append(line)
            chunk_bytes += len(line)
            if self._size + chunk_bytes >= self._max_bytes:
                # Rotate at the line that passes the limit, even inside one batch.
                self._write(b"".join(chunk), len(chunk))
                chunk, chunk_bytes = [], 0
        if chunk:
            self._write(b"".join(chunk), len(chunk))
        self._report_drops()

    def _write(self, data: bytes, count: int) -> None:
        try:
            fd = self._open()
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        except OSError as exc:
            self._close_file()
            self._retry_at = time.monotonic() + RETRY_OPEN_S
            self._drop(count, f"write failed: {exc.strerror or exc}")
            return
        self._size += len(data)
        if self._size >= self._max_bytes:
            try:
                self._rotate()
            except OSError as exc:
                # The lines are written; try again after another max_bytes rather than per batch.
                self._size = 0
                log.error("capture_rotation_failed", path=str(self.path), error=str(exc))

    def _open(self) -> int:
        if self._fd is not None:
            return self._fd
        if time.monotonic() < self._retry_at:
            raise OSError(f"{self.path}: not writable a moment ago; retrying shortly")
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
        fd = os.open(self.path, flags, FILE_MODE)
        info = os.fstat(fd)
        # An existing file keeps its mode on open: narrow it, it holds callers' numbers.
        if stat.S_ISREG(info.st_mode) and stat.S_IMODE(info.st_mode) != FILE_MODE:
            os.fchmod(fd, FILE_MODE)
        self._fd, self._size = fd, info.st_size
        return fd

    def _close_file(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            with contextlib.suppress(OSError):
                os.close(fd)

    def _rotate(self) -> None:
        """NAME -> NAME.1 -> ... -> NAME.keep; older ones deleted. The next write creates NAME."""
        self._close_file()
        name = str(self.path)
        extra = self._keep + 1
        while os.path.lexists(f"{name}.{extra}"):  # left over from a larger capture_keep
            os.unlink(f"{name}.{extra}")
            extra += 1
        for index in range(self._keep, 0, -1):
            source = name if index == 1 else f"{name}.{index - 1}"
            if os.path.lexists(source):
                os.replace(source, f"{name}.{index}")

    # -- dropped lines ------------------------------------------------------------------------

    def _drop(self, count: int, reason: str) -> None:
        self._dropped.inc(count)
        with self._drop_lock:
            self._drops_held += count
            self._drop_reason = reason
        self._report_drops()

    def _report_drops(self, *, force: bool = False) -> None:
        """At most one log line per second for dropped lines, with the count held back."""
        if not self._drops_held:
            return
        now = time.monotonic()
        with self._drop_lock:
            if not self._drops_held or (
                not force and now - self._drop_logged_at < DROP_LOG_INTERVAL_S
            ):
                return
            count, self._drops_held = self._drops_held, 0
            self._drop_logged_at = now
            reason = self._drop_reason
        log.warning("capture_dropped", count=count, reason=reason, path=str(self.path))


# -- reading it back (mtt-router replay) -----------------------------------------------------------


class CaptureError(Exception):
    """The capture file as a whole cannot be replayed (unreadable, or no capture line in it)."""


class BadLine(NamedTuple):
    """A capture line that was skipped, and why (``FILE:LINE: message``)."""

    line: int
    message: str


class Record(NamedTuple):
    """One captured POST, as read back (:func:`read_capture`)."""

    line: int
    received_at_s: float
    status: int
    body: bytes | None


def read_capture(
    path: Path, on_bytes: Callable[[int], None] | None = None
) -> Iterator[Record | BadLine]:
    """Each line of the capture as a :class:`Record` or a :class:`BadLine` (blank lines skipped).

    Raises :class:`CaptureError` when the file cannot be read.
    """
    try:
        handle = path.open("rb")
    except OSError as exc:
        raise CaptureError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    with handle:
        try:
            for number, raw in enumerate(handle, 1):
                if on_bytes is not None:
                    on_bytes(len(raw))
                if raw.strip():
                    yield _record(number, raw)
        except OSError as exc:
            raise CaptureError(f"{path}: cannot read: {exc.strerror or exc}") from exc


def _record(number: int, raw: bytes) -> Record | BadLine:
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return BadLine(number, f"not a JSON line ({exc})")
    if not isinstance(data, dict):
        return BadLine(number, "not a capture line (a JSON object is expected)")
    at = data.get("received_at_s")
    if isinstance(at, bool) or not isinstance(at, int | float):
        at = _iso_seconds(data.get("received_at"))
        if at is None:
            return BadLine(number, "no received_at_s or received_at")
    status = data.get("status")
    if isinstance(status, bool) or not isinstance(status, int):
        return BadLine(number, "no status")
    body = data.get("body")
    if body is None:
        return Record(number, float(at), status, None)
    if not isinstance(body, str):
        return BadLine(number, "body must be a string or null")
    if data.get("body_encoding") == "base64":
        try:
            return Record(number, float(at), status, base64.b64decode(body, validate=True))
        except (binascii.Error, ValueError):
            return BadLine(number, "body is not valid base64")
    return Record(number, float(at), status, body.encode("utf-8", "surrogatepass"))


def _iso_seconds(value: Any) -> float | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()
