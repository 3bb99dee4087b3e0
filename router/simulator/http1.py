"""A lean HTTP/1.1 client for webhook POSTs: keep-alive pools, callbacks, no task per request.

MTT's notifications are small JSON POSTs to one URL; at bench rates the simulator sends
thousands a second, and aiohttp's client (a task, a request object, header multidicts and a
timer per request) cost more CPU than the daemon it was measuring. This client writes one
prebuilt request on an idle keep-alive connection and parses only what it needs of the answer
(status, ``Content-Length`` or chunked body, ``Connection: close``). Plain ``http://`` only;
:class:`router.simulator.webhook.WebhookSender` sends ``https://`` through aiohttp.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import cast
from urllib.parse import urlsplit

Done = Callable[[int | None, BaseException | None], None]
"""Called once per request: ``(status, None)`` or ``(None, error)``."""

_MAX_HEADER_BYTES = 64 * 1024


class _Origin:
    """Connections to one ``host:port``: idle ones, a cap, and requests waiting for one."""

    def __init__(self, client: Http1Client, host: str, port: int) -> None:
        self.client = client
        self.host = host
        self.port = port
        self.idle: list[_Conn] = []
        self.conns: set[_Conn] = set()
        self.open = 0
        self.waiting: deque[tuple[bytes, Done, bool]] = deque()

    def submit(self, request: bytes, done: Done, retried: bool = False) -> None:
        while self.idle:
            conn = self.idle.pop()
            if not conn.closed:
                conn.send(request, done, retried)
                return
        self.waiting.append((request, done, retried))
        if self.open < self.client.limit:
            self.open += 1
            task = self.client.loop.create_task(self._connect())
            self.client.tasks.add(task)
            task.add_done_callback(self.client.tasks.discard)

    async def _connect(self) -> None:
        loop = self.client.loop
        try:
            _, conn = await loop.create_connection(lambda: _Conn(self), self.host, self.port)
        except OSError as exc:
            self.open -= 1
            if self.waiting:
                _, done, _ = self.waiting.popleft()
                done(None, exc)
            return
        self.conns.add(conn)
        self.release(conn)

    def release(self, conn: _Conn) -> None:
        """``conn`` is free: give it the next waiting request, or keep it idle."""
        if self.waiting:
            request, done, retried = self.waiting.popleft()
            conn.send(request, done, retried)
        else:
            self.idle.append(conn)

    def lost(self, conn: _Conn) -> None:
        self.open -= 1
        self.conns.discard(conn)
        if conn in self.idle:
            self.idle.remove(conn)


class _Conn(asyncio.Protocol):
    """One keep-alive connection; at most one request in flight."""

    def __init__(self, origin: _Origin) -> None:
        self.origin = origin
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.used = 0
        self._request = b""
        self._done: Done | None = None
        self._retried = False
        self._timer: asyncio.TimerHandle | None = None
        self._buf = bytearray()
        self._status = 0
        self._body_at = -1
        self._length = -1
        self._chunked = False
        self._keep_alive = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport; they behave like one.
        self.transport = cast(asyncio.Transport, transport)

    def send(self, request: bytes, done: Done, retried: bool) -> None:
        assert self.transport is not None
        self.used += 1
        self._request, self._done, self._retried = request, done, retried
        self._buf.clear()
        self._body_at, self._length, self._chunked, self._keep_alive = -1, -1, False, True
        self._timer = self.origin.client.loop.call_later(
            self.origin.client.timeout_s, self._timed_out
        )
        self.transport.write(request)

    def data_received(self, data: bytes) -> None:
        if self._done is None:
            return  # nothing asked: a stray byte from a broken server; ignore it
        self._buf += data
        if self._body_at < 0 and not self._parse_head():
            return
        if self._chunked:
            if self._chunks_complete():
                self._finish()
        elif self._length >= 0 and len(self._buf) - self._body_at >= self._length:
            self._finish()

    def _parse_head(self) -> bool:
        end = self._buf.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buf) > _MAX_HEADER_BYTES:
                self._fail(ConnectionError("response headers too long"))
            return False
        lines = bytes(self._buf[:end]).split(b"\r\n")
        parts = lines[0].split(b" ", 2)
        try:
            self._status = int(parts[1])
        except (IndexError, ValueError):
            self._fail(ConnectionError(f"bad status line {lines[0][:80]!r}"))
            return False
        self._keep_alive = not lines[0].startswith(b"HTTP/1.0")
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                self._length = int(value.strip())
            elif name == b"transfer-encoding":
                self._chunked = b"chunked" in value.lower()
            elif name == b"connection":
                token = value.strip().lower()
                if token == b"close":
                    self._keep_alive = False
                elif token == b"keep-alive":
                    self._keep_alive = True
        self._body_at = end + 4
        if not self._chunked and self._length < 0:
            if self._status in (204, 304) or 100 <= self._status < 200:
                self._length = 0
            else:
                self._keep_alive = False  # the body runs until the server closes
        return True

    def _chunks_complete(self) -> bool:
        pos = self._body_at
        buf = self._buf
        while True:
            eol = buf.find(b"\r\n", pos)
            if eol < 0:
                return False
            size = int(bytes(buf[pos:eol]).split(b";", 1)[0].strip() or b"0", 16)
            if size == 0:
                return buf.find(b"\r\n\r\n", eol) >= 0 or buf.endswith(b"0\r\n\r\n")
            pos = eol + 2 + size + 2
            if pos > len(buf):
                return False

    def _finish(self) -> None:
        done = self._take()
        if self._keep_alive and not self.closed:
            self.origin.release(self)
        elif self.transport is not None:
            self.transport.close()
        if done is not None:
            done(self._status, None)

    def _take(self) -> Done | None:
        done, self._done = self._done, None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        return done

    def _fail(self, exc: BaseException) -> None:
        done = self._take()
        if self.transport is not None:
            self.transport.abort()
        if done is not None:
            done(None, exc)

    def abandon(self) -> None:
        """Close now and forget the request in flight (its callback is never called)."""
        self._take()
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    def _timed_out(self) -> None:
        self._timer = None
        self._fail(TimeoutError("no answer from the webhook in time"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.origin.lost(self)
        if self._done is None:
            return
        if self._body_at >= 0 and self._length < 0 and not self._chunked:
            self._finish()  # a body delimited by the close: complete now
            return
        if not self._buf and self.used > 1 and not self._retried:
            # A keep-alive connection the server had closed while idle: nothing was processed.
            done = self._take()
            if done is not None:
                self.origin.submit(self._request, done, retried=True)
            return
        self._fail(exc or ConnectionResetError("the webhook closed the connection"))


class Http1Client:
    """POSTs to ``http://`` URLs over per-origin keep-alive pools of at most ``limit``."""

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout_s: float, limit: int) -> None:
        self.loop = loop
        self.timeout_s = timeout_s
        self.limit = limit
        self.tasks: set[asyncio.Task[None]] = set()
        self._origins: dict[tuple[str, int], _Origin] = {}
        self._heads: dict[str, tuple[_Origin, bytes]] = {}

    def _head(self, url: str) -> tuple[_Origin, bytes]:
        cached = self._heads.get(url)
        if cached is not None:
            return cached
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"not a plain http:// URL: {url!r}")
        port = parts.port or 80
        key = (parts.hostname, port)
        origin = self._origins.get(key)
        if origin is None:
            origin = self._origins[key] = _Origin(self, parts.hostname, port)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        host = parts.netloc.rsplit("@", 1)[-1]
        head = (
            f"POST {target} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: mtt-simulator\r\n"
            "Content-Type: application/json\r\nContent-Length: "
        ).encode("latin-1")
        if len(self._heads) > 64:
            self._heads.clear()
        self._heads[url] = (origin, head)
        return origin, head

    def post(self, url: str, body: bytes, done: Done) -> None:
        """Send ``body`` as a JSON POST; ``done`` is called with the status or the error."""
        origin, head = self._head(url)
        origin.submit(b"%s%d\r\n\r\n%s" % (head, len(body), body), done)

    async def close(self) -> None:
        """Close every connection; requests in flight are dropped without their callback."""
        for task in list(self.tasks):
            task.cancel()
        for origin in self._origins.values():
            origin.waiting.clear()
            origin.idle.clear()
            for conn in list(origin.conns):
                conn.abandon()
        self._origins.clear()
        self._heads.clear()
