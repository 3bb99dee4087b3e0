"""structlog set-up, and the one place that decides how each kind of command logs.

- The daemon (``mtt-router run``, and whatever stands in for it: the demo's in-process daemon,
  the simulator) writes ``log.format``: JSON lines by default, on a terminal too, so what an
  operator sees in a terminal is what production writes. :func:`setup_daemon_logging`.
- Interactive commands (``auth``, ``pbx``, ``clients``, ``rules push|pull``...) write
  human-readable lines on stderr, coloured only on a terminal; their results go to stdout.
  :func:`setup_cli_logging`.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO

import orjson
import structlog


def _dumps(event: Any, **_: Any) -> str:
    # orjson: a few times cheaper than json.dumps for the one line per decision; objects it
    # cannot encode are logged by their repr(), as structlog's own fallback does.
    return orjson.dumps(event, default=repr).decode()


def setup_daemon_logging(
    fmt: str = "json", level: str = "info", stream: TextIO | None = None
) -> None:
    """A server's logging: ``fmt`` (``json`` or ``console``) at ``level`` to ``stream`` (stderr).

    The format is never switched on a TTY: the daemon writes what its config says, wherever it
    runs. ``console`` is the operator's explicit choice, not a guess.
    """
    _configure(fmt, level, sys.stderr if stream is None else stream)


def setup_cli_logging(level: str = "info") -> None:
    """An interactive command's logging: readable lines on stderr, coloured only on a TTY.

    stdout stays for the command's own output (tables, JSON), so log lines never mix into it.
    """
    _configure("console", level, sys.stderr)


def _configure(fmt: str, level: str, stream: TextIO) -> None:
    """JSON lines (``fmt='json'``) or console lines, at ``level``, to ``stream``.

    Context bound with ``structlog.contextvars.bind_contextvars`` (the call id) appears in every
    line.
    """
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
        # Not cached: module-level loggers must follow a later set-up (tests, the demo's log
        # file). Costs a few microseconds per line; we log one line per decision.
        cache_logger_on_first_use=False,
    )
