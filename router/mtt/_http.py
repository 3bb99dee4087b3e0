"""Shared by the OAuth and API clients: aiohttp failures, answers and error bodies into our values
and errors."""

from __future__ import annotations

import email.utils
import json
from typing import Any

import aiohttp

from router.errors import ClientRequestError, ServerError, UpstreamConnectionError

MESSAGE_MAX_CHARS = 200
"""MTT's error text is kept for operators, cut short so a huge error page cannot flood the logs."""


def connection_error(exc: aiohttp.ClientError, method: str) -> UpstreamConnectionError:
    """Wrap an aiohttp transport error; ``retryable`` only when the request was surely not sent.

    A failed connect (refused, unreachable, DNS) sent nothing, so even a write may be retried. A
    connection that broke after the request went out may have reached MTT: only reads retry that.
    TLS failures are not retryable at all: the next attempt would fail the same way.
    """
    not_sent = isinstance(exc, aiohttp.ClientConnectorError) and not isinstance(
        exc, aiohttp.ClientConnectorCertificateError | aiohttp.ClientConnectorSSLError
    )
    return UpstreamConnectionError(
        f"{method}: cannot reach MTT ({type(exc).__name__}: {exc})",
        method=method,
        retryable=not_sent,
    )


def decode_json(raw: bytes) -> Any:
    """The JSON value of a body, or ``None`` when it is empty or not JSON."""
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return None


def _text(value: Any) -> str:
    return value.strip() if isinstance(value, str) else ""


def error_message(raw: bytes) -> str:
    """MTT's own words from an error body, in any of the shapes we have seen or can expect.

    API errors look like ``{"error": {"code": .., "message": ..}}``; OAuth errors like
    ``{"error": "invalid_grant", "error_description": ..}``; some answers put ``message`` in
    ``result``. Anything else: the start of the body as text.
    """
    data = decode_json(raw)
    message = ""
    if isinstance(data, dict):
        error = data.get("error")
        result = data.get("result")
        if isinstance(error, dict):
            message = _text(error.get("message")) or _text(error.get("description"))
        message = (
            message
            or _text(data.get("error_description"))
            or _text(data.get("message"))
            or (_text(result.get("message")) if isinstance(result, dict) else "")
            or _text(error)
        )
    elif data is None and raw:
        message = raw.decode("utf-8", "replace").strip()
    return message[:MESSAGE_MAX_CHARS]


def retry_after_s(value: str | None, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta seconds or an HTTP date, at ``now``
    in Unix seconds); ``None`` when absent or unreadable."""
    if value is None:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value)) if value.isascii() else None
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - now)


def answer_result(method: str, status: int, raw: bytes) -> Any:
    """The ``result`` of a 2xx answer, or the typed error for anything else."""
    if status >= 300:
        message = error_message(raw)
        text = f"{method}: MTT answered {status}" + (f": {message}" if message else "")
        if status >= 500:
            raise ServerError(text, method=method, status=status)
        raise ClientRequestError(text, method=method, status=status, mtt_message=message)
    data = decode_json(raw)
    if raw and data is None:
        raise ServerError(f"{method}: answer is not JSON", method=method, status=status)
    if not isinstance(data, dict):
        return data
    result = data.get("result", data)
    if data.get("error") or _failed(data) or _failed(result):
        message = error_message(raw) or "success: 0"
        raise ClientRequestError(
            f"{method}: MTT refused: {message}", method=method, status=status, mtt_message=message
        )
    return result


def _failed(value: Any) -> bool:
    """True for an answer that says ``"success": 0`` (or false) in so many words."""
    return isinstance(value, dict) and "success" in value and value["success"] in (0, False, "0")
