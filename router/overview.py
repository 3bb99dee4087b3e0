"""What ``GET /status`` (JSON) and the status page ``GET /`` (HTML) show: one gathering.

:func:`gather` reads the daemon's state once, as plain JSON-ready data: tokens' expiry (never a
token), the rules in use with their managers, the directory, who is on a call, the rollout, the
sources of notifications, the bounds, the answered-call counts with the personal-manager hit rate,
and the recent decisions (:mod:`router.history`). With ``log.mask_numbers`` the callers' numbers in
the decisions are masked exactly as in the log lines (:func:`router.logs.mask_numbers`).
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, tzinfo
from typing import Any

from router.logs import mask_numbers
from router.services import Services

ANSWERED_BY = ("personal", "deputy", "fallback", "other", "nobody")
"""``mtt_router_answered_total{by}``; the hit rate is ``personal / sum``."""


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def answered(services: Services) -> dict[str, Any]:
    """Decided calls by who answered them, and the personal-manager hit rate (``None``: none)."""
    registry = services.metrics.registry
    counts = {
        by: int(registry.get_sample_value("mtt_router_answered_total", {"by": by}) or 0)
        for by in ANSWERED_BY
    }
    total = sum(counts.values())
    return {
        "by": counts,
        "total": total,
        "hit_rate": round(counts["personal"] / total, 3) if total else None,
    }


def _rules(services: Services) -> tuple[dict[str, Any], tzinfo]:
    loaded = services.rules.current
    rules: dict[str, Any] = {"loaded": loaded is not None, "last_error": services.rules.last_error}
    if loaded is None:
        return rules, UTC
    rules |= {
        "version": loaded.version,
        "source": loaded.source,
        "loaded_at": _iso(loaded.loaded_at),
        "counts": loaded.rules.counts(),
        "timezone": str(loaded.rules.timezone),
        "managers": [
            {"id": m.id, "name": m.name, "workplace": m.workplace}
            for m in sorted(loaded.rules.managers.values(), key=lambda m: m.id)
        ],
    }
    return rules, loaded.rules.timezone


def _history(services: Services, tz: tzinfo) -> dict[str, Any] | None:
    if services.history is None:
        return None
    found = services.history.snapshot(tz)
    found["masked"] = services.config.log.mask_numbers
    if services.config.log.mask_numbers:
        # The log's own processor, on the same fields: caller, reasons, error.
        found["recent"] = [dict(mask_numbers(None, "status", entry)) for entry in found["recent"]]
    return found


def gather(services: Services) -> dict[str, Any]:
    """The operator's overview (the ``/status`` body; the status page renders the same)."""
    rules, tz = _rules(services)
    directory = services.directory
    known = directory.numbers is not None
    return {
        "started_at": _iso(services.started_at),
        "tokens": services.tokens.status(),
        "rules": rules,
        "directory": {
            "numbers": sorted(directory.raw_numbers) if known else None,
            "parked_numbers": sorted(directory.parked),
            "workplaces": (
                None
                if directory.workplaces is None
                else [{"workplace": k, "name": v} for k, v in sorted(directory.workplaces.items())]
            ),
        },
        "engine": {
            "inflight": services.engine.inflight,
            "busy": sorted(services.stores.presence.busy()),
        },
        "storage": services.stores.description,
        "sources": services.guard.sources(),
        "bounds": {name: bound._asdict() for name, bound in services.bounds().items()},
        "tasks": len(asyncio.all_tasks()),
        "rollout": services.rollout.status(directory.raw_numbers if known else None),
        "answered": answered(services),
        "history": _history(services, tz),
    }
