"""Medians over repeated runs, and the human-readable table."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

from router.bench.load import RunResult

COLUMNS = (
    ("rate", "rate/s"),
    ("achieved_rate", "placed/s"),
    ("sent", "sent"),
    ("routed", "routed"),
    ("missed", "missed"),
    ("in_window_pct", "in window %"),
    ("p50_ms", "p50 ms"),
    ("p90_ms", "p90 ms"),
    ("p99_ms", "p99 ms"),
    ("max_ms", "max ms"),
    ("daemon_cpu_ms_per_call", "cpu ms/call"),
    ("redis_cpu_ms_per_call", "redis cpu ms/call"),
    ("redis_cmds_per_call", "redis cmds/call"),
    ("redis_trips_per_call", "redis trips/call"),
    ("daemon_rss_mb", "rss MB"),
    ("sim_cpu_ms_per_call", "sim cpu ms/call"),
    ("webhook_errors", "hook errors"),
    ("load1", "load1"),
)
OPTIONAL = frozenset({"redis_cpu_ms_per_call", "redis_cmds_per_call", "redis_trips_per_call"})
"""Columns shown only when some row has a value (Redis storage)."""


def medians(runs: Sequence[RunResult]) -> dict[str, Any]:
    """Per field, the median over ``runs`` (fields missing in some runs use the others; a
    mapping's median is taken per key)."""
    rows = [run.to_json() for run in runs]
    out: dict[str, Any] = {}
    for key in rows[0]:
        values = [row[key] for row in rows if row[key] is not None]
        if values and isinstance(values[0], dict):
            names = sorted({name for value in values for name in value})
            out[key] = {n: round(statistics.median(v.get(n, 0) for v in values), 3) for n in names}
        else:
            out[key] = round(statistics.median(values), 3) if values else None
    return out


def table(rows: Sequence[tuple[str, dict[str, Any]]]) -> str:
    """Aligned text: one line per (label, result) pair."""
    columns = [
        (key, title)
        for key, title in COLUMNS
        if key not in OPTIONAL or any(row.get(key) is not None for _, row in rows)
    ]
    headers = ["run", *(title for _, title in columns)]
    cells = [
        [label, *("-" if row.get(key) is None else _fmt(row[key]) for key, _ in columns)]
        for label, row in rows
    ]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(headers)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(headers, widths, strict=True))]
    lines += ["  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}" if value == int(value) else f"{value:.2f}"
    return str(value)
