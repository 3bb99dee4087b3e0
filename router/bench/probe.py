"""The daemon's vital signs during a long or hostile run: RSS, open FDs, asyncio tasks, its maps.

RSS and open file descriptors come from ``/proc`` (:mod:`router.bench.proc`); the task count and
how full each bounded map is come from the admin ``/status`` (``"tasks"``: asyncio tasks in the
process; ``"bounds"``: name -> ``{"size", "max"}``). A daemon whose ``/status`` lacks them, or
that cannot be seen in ``/proc``, reports ``None`` there ("n/a" in text).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from router.bench import proc

Flat = dict[str, float | int | None]
"""One reading as ``{"rss_mb", "fds", "tasks", "<map name>": size, ...}``."""

CORE = (
    ("rss_mb", "rss MB"),
    ("fds", "open fds"),
    ("conns_in", "  TCP in (fds)"),
    ("conns_out", "  TCP out (fds)"),
    ("tasks", "asyncio tasks"),
)


@dataclass(frozen=True)
class Vitals:
    """One reading of the daemon at ``at_s`` seconds into the run."""

    at_s: float
    rss_mb: float | None
    fds: int | None
    conns: tuple[int, int] | None
    """TCP connections holding a descriptor: (inbound, outbound); see
    :func:`router.bench.proc.tcp_connections`."""
    tasks: int | None
    bounds: dict[str, tuple[int, int]] | None
    """Map name -> (size, max); ``None`` when ``/status`` has no ``"bounds"``."""
    extra: dict[str, Any] = field(default_factory=dict)
    """What the caller adds (calls live in the simulator, calls placed so far)."""

    @property
    def fds_besides_connections(self) -> int | None:
        """Open descriptors that are not TCP connections: listeners, files, the loop's own."""
        if self.fds is None or self.conns is None:
            return None
        return self.fds - sum(self.conns)

    @property
    def tasks_besides_connections(self) -> int | None:
        """asyncio tasks besides the one aiohttp's server keeps per open connection."""
        if self.tasks is None or self.conns is None:
            return None
        return self.tasks - self.conns[0]

    def flat(self) -> Flat:
        """The numbers by name: RSS, FDs, connections, tasks, then each map's size."""
        conns_in, conns_out = self.conns if self.conns is not None else (None, None)
        out: Flat = {
            "rss_mb": self.rss_mb,
            "fds": self.fds,
            "conns_in": conns_in,
            "conns_out": conns_out,
            "tasks": self.tasks,
        }
        for name, (size, _) in (self.bounds or {}).items():
            out[name] = size
        return out

    def to_json(self) -> dict[str, Any]:
        """Plain JSON (``bounds`` as ``/status`` gives it)."""
        bounds = None
        if self.bounds is not None:
            bounds = {name: {"size": s, "max": m} for name, (s, m) in self.bounds.items()}
        return {
            "at_s": round(self.at_s, 2),
            "rss_mb": self.rss_mb,
            "fds": self.fds,
            "conns_in": None if self.conns is None else self.conns[0],
            "conns_out": None if self.conns is None else self.conns[1],
            "tasks": self.tasks,
            "bounds": bounds,
            **self.extra,
        }


def parse_bounds(value: Any) -> dict[str, tuple[int, int]] | None:
    """``/status`` "bounds" as name -> (size, max); ``None`` when absent or not that shape."""
    if not isinstance(value, dict):
        return None
    out: dict[str, tuple[int, int]] = {}
    for name, bound in value.items():
        if isinstance(bound, dict):
            size, most = bound.get("size"), bound.get("max")
            if isinstance(size, int) and isinstance(most, int):
                out[str(name)] = (size, most)
    return out


async def fetch(http: aiohttp.ClientSession, url: str) -> bytes | None:
    """The body of a 200 answer to ``GET url``, or ``None``.

    Asked twice when the connection fails: the daemon closes keep-alive connections idle for
    ``server.read_timeout_s``, and a reading may pick one up just as it is being closed.
    """
    for attempt in range(2):
        try:
            async with http.get(url, allow_redirects=False) as resp:
                return await resp.read() if resp.status == 200 else None
        except aiohttp.ClientConnectionError:
            if attempt:
                return None
        except (aiohttp.ClientError, TimeoutError):
            return None
    return None


async def status(http: aiohttp.ClientSession, admin_url: str) -> dict[str, Any] | None:
    """The daemon's ``/status`` JSON, or ``None`` when it did not answer with one."""
    raw = await fetch(http, f"{admin_url}/status")
    try:
        body = None if raw is None else json.loads(raw)
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


async def read(
    http: aiohttp.ClientSession, admin_url: str, pid: int | None, at_s: float, **extra: Any
) -> Vitals:
    """Read the daemon now."""
    body = await status(http, admin_url) or {}
    # Right after /status, together: the task count is the nearest to these in time.
    rss = proc.rss_bytes(pid) if pid else None
    fds = proc.open_fds(pid) if pid else None
    tasks = body.get("tasks")
    return Vitals(
        at_s=at_s,
        rss_mb=None if rss is None else round(rss / 2**20, 1),
        fds=fds,
        conns=proc.tcp_connections(pid) if pid else None,
        tasks=tasks if isinstance(tasks, int) else None,
        bounds=parse_bounds(body.get("bounds")),
        extra=extra,
    )


def drift(start: Vitals, end: Vitals) -> Flat:
    """``end - start`` for every number both readings have (``None`` where one lacks it)."""
    a, b = start.flat(), end.flat()
    out: Flat = {}
    for key in {**a, **b}:
        x, y = a.get(key), b.get(key)
        out[key] = None if x is None or y is None else round(y - x, 1)
    return out


def peak(readings: Sequence[Vitals]) -> Flat:
    """The highest value of every number over ``readings``."""
    out: Flat = {}
    for reading in readings:
        for key, value in reading.flat().items():
            if value is not None:
                seen = out.get(key)
                out[key] = value if seen is None else max(seen, value)
            else:
                out.setdefault(key, None)
    return out


def maxima(readings: Sequence[Vitals]) -> dict[str, int]:
    """Each map's limit, as the readings report it."""
    return {name: most for r in readings for name, (_, most) in (r.bounds or {}).items()}


def table(
    columns: Sequence[tuple[str, Mapping[str, float | int | None]]],
    limits: Mapping[str, int],
    *,
    signed: Sequence[str] = (),
) -> str:
    """Aligned text: one row per number (core three, then the maps), one column per reading;
    columns named in ``signed`` show a sign (drift)."""
    keys = [key for key, _ in CORE]
    for _, values in columns:
        keys += [k for k in values if k not in keys]
    labels = dict(CORE)
    rows = [["", *(title for title, _ in columns)]]
    for key in keys:
        label = labels.get(key) or (f"{key} (max {limits[key]})" if key in limits else key)
        rows.append(
            [label, *(_cell(values.get(key), title in signed) for title, values in columns)]
        )
    if len(keys) == len(CORE):  # /status without "bounds"
        rows.append(["bounded maps", *("n/a" for _ in columns)])
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in rows
    )


def _cell(value: float | int | None, signed: bool) -> str:
    if value is None:
        return "n/a"
    text = f"{value:g}" if isinstance(value, int) or value == int(value) else f"{value:.1f}"
    return f"+{text}" if signed and value > 0 else text
