"""structlog set-up, called once by the CLI entry point of a command that logs."""

from __future__ import annotations

import logging
import sys
from typing import Any

import orjson
import structlog


def _dumps(event: Any, **_: Any) -> str:
    # orjson: a few times cheaper than json.dumps for the one line per decision; objects it
    # cannot encode are logged by their repr(), as structlog's own fallback does.
    return orjson.dumps(event, default=repr).decode()


def configure_logging(fmt: str = "json", level: str = "info", stream: Any = None) -> None:
    """JSON lines (``fmt='json'``) or coloured console lines, at ``level``, to ``stream``.

    ``fmt='auto'`` picks console on a TTY and JSON otherwise. Context bound with
    ``structlog.contextvars.bind_contextvars`` (the call id) appears in every line.
    """
    stream = sys.stderr if stream is None else stream
    if fmt == "auto":
        fmt = "console" if stream.isatty() else "json"
    renderer: Any
    if fmt == "console":
        renderer = structlog.dev.ConsoleRenderer(colors=stream.isatty())
    else:
        renderer = structlog.processors.JSONRenderer(serializer=_dumps)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.WriteLoggerFactory(stream),
        # Not cached: module-level loggers must follow a later configure_logging() (tests, the
        # demo's log file). Costs a few microseconds per line; we log one line per decision.
        cache_logger_on_first_use=False,
    )
