"""structlog set-up, and the one place that decides how each kind of command logs.

- The daemon (``mtt-router run``, and whatever stands in for it: the demo's in-process daemon,
  the simulator) writes ``log.format``: JSON lines by default, on a terminal too, so what an
  operator sees in a terminal is what production writes. :func:`setup_daemon_logging`.
- Interactive commands (``auth``, ``pbx``, ``clients``, ``rules push|pull``...) write
  human-readable lines on stderr, coloured only on a terminal; their results go to stdout.
  :func:`setup_cli_logging`.

``log.mask_numbers`` adds one processor, :func:`mask_numbers`: callers' numbers are personal data,
so the daemon's lines can show them as ``+7921***2761`` (the decision line keeps ``call_id``, which
joins it to the capture file, where numbers stay whole).
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Mapping, MutableMapping
from functools import lru_cache
from typing import Any, TextIO

import orjson
import structlog
from phonenumbers import COUNTRY_CODE_TO_REGION_CODE

from router.numbers import try_normalize


def _dumps(event: Any, **_: Any) -> str:
    # orjson: a few times cheaper than json.dumps for the one line per decision; objects it
    # cannot encode are logged by their repr(), as structlog's own fallback does.
    return orjson.dumps(event, default=repr).decode()


_PHONE_IN_TEXT = re.compile(r"(?<![\w.*])\+?\d{10,13}(?![\w.])")
"""A phone number inside a reason: 10-13 digits. Workplace SIP IDs (15 digits) and prefixes are
not personal data and stay as they are."""


@lru_cache(maxsize=4096)
def mask_number(raw: str) -> str:
    """``raw`` with the middle hidden: ``+7921***2761`` (country code and 3 digits, the last 4);
    short numbers mostly masked (``***61``). Text with no digits is returned as it is."""
    # ASCII digits only: str.isdigit() also takes "²", which int() refuses.
    digits = try_normalize(raw) or "".join(c for c in raw if "0" <= c <= "9")
    if not digits:
        return raw
    if len(digits) >= 10:
        # Country codes are prefix-free: the first 1-3 digits that are one are the one.
        cc = next((n for n in (1, 2, 3) if int(digits[:n]) in COUNTRY_CODE_TO_REGION_CODE), 0)
        head = cc + 3
        if cc and len(digits) - head - 4 >= 2:
            return f"+{digits[:head]}***{digits[-4:]}"
    return "***" + digits[-2:] if len(digits) > 4 else "***"


def _mask_text(text: str, caller: str | None) -> str:
    if caller and caller in text:
        text = text.replace(caller, mask_number(caller))
    return _PHONE_IN_TEXT.sub(lambda match: mask_number(match.group()), text)


def mask_numbers(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: ``caller``, and phone numbers inside ``reasons`` and ``error``, masked.

    ``callee`` (the company's own line) and ``workplace`` (a SIP ID) are not personal data and
    stay as they are.
    """
    caller = event_dict.get("caller")
    if isinstance(caller, str) and caller:
        event_dict["caller"] = mask_number(caller)
    else:
        caller = None
    reasons = event_dict.get("reasons")
    if reasons:
        event_dict["reasons"] = [
            _mask_text(r, caller) if isinstance(r, str) else r for r in reasons
        ]
    error = event_dict.get("error")
    if isinstance(error, str) and error:
        event_dict["error"] = _mask_text(error, caller)
    return event_dict


def setup_daemon_logging(
    fmt: str = "json",
    level: str = "info",
    stream: TextIO | None = None,
    *,
    mask_numbers: bool = False,
    extra: Mapping[str, Any] | None = None,
) -> None:
    """A server's logging: ``fmt`` (``json`` or ``console``) at ``level`` to ``stream`` (stderr).

    The format is never switched on a TTY: the daemon writes what its config says, wherever it
    runs. ``console`` is the operator's explicit choice, not a guess. ``mask_numbers``
    (``log.mask_numbers``) masks callers' numbers in every line (:func:`mask_numbers`).
    ``extra`` goes into every line that does not set those keys itself (a worker's index and
    pid: ``server.workers`` share one stderr).
    """
    stream = sys.stderr if stream is None else stream
    _configure(fmt, level, stream, mask=mask_numbers, extra=extra)


def setup_cli_logging(level: str = "info") -> None:
    """An interactive command's logging: readable lines on stderr, coloured only on a TTY.

    stdout stays for the command's own output (tables, JSON), so log lines never mix into it.
    """
    _configure("console", level, sys.stderr)


def _configure(
    fmt: str,
    level: str,
    stream: TextIO,
    *,
    mask: bool = False,
    extra: Mapping[str, Any] | None = None,
) -> None:
    """JSON lines (``fmt='json'``) or console lines, at ``level``, to ``stream``.

    Context bound with ``structlog.contextvars.bind_contextvars`` (the call id) appears in every
    line.
    """
    renderer: Any
    if fmt == "console":
        renderer = structlog.dev.ConsoleRenderer(colors=stream.isatty())
    else:
        renderer = structlog.processors.JSONRenderer(serializer=_dumps)
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
    ]
    if mask:
        processors.append(mask_numbers)
    if extra:
        fields = dict(extra)

        def add_extra(
            _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
        ) -> MutableMapping[str, Any]:
            for key, value in fields.items():
                event_dict.setdefault(key, value)
            return event_dict

        processors.append(add_extra)
    structlog.configure(
        processors=[*processors, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.WriteLoggerFactory(stream),
        # Not cached: module-level loggers must follow a later set-up (tests, the demo's log
        # file). Costs a few microseconds per line; we log one line per decision.
        cache_logger_on_first_use=False,
    )
