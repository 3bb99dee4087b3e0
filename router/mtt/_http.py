"""Shared by the OAuth and API clients: aiohttp failures and error bodies into our errors."""

from __future__ import annotations

import json
from typing import Any

import aiohttp

from router.errors import UpstreamConnectionError

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
