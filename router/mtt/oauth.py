"""OAuth 2.0 against MTT: the authorize URL, the code exchange and the refresh grant.

This module only speaks the protocol; keeping tokens fresh and persisted is
:class:`router.mtt.auth.TokenManager`'s job. Neither the client secret nor any token ever reaches
a log line, an exception message or a ``repr``.
"""

from __future__ import annotations

import asyncio
from urllib.parse import urlencode

import aiohttp

from router.config import SCOPE, MttConfig
from router.errors import (
    AuthError,
    ClientRequestError,
    InvalidGrantError,
    ServerError,
    UpstreamError,
    UpstreamTimeoutError,
)
from router.metrics import Metrics
from router.mtt._http import connection_error, decode_json, error_message
from router.mtt.tokens import TokenResponse, token_response

TOKEN_METHOD = "oauthToken"
"""The ``method`` label of token endpoint requests in ``mtt_router_api_requests_total``."""


class OAuthClient:
    """MTT's OAuth endpoints, over the caller's long-lived ``session``."""

    def __init__(self, session: aiohttp.ClientSession, config: MttConfig, metrics: Metrics) -> None:
        self._session = session
        self._config = config
        self._metrics = metrics
        self._token_url = f"{config.oauth_url.rstrip('/')}/oauth/token"

    def __repr__(self) -> str:
        config = self._config
        return f"OAuthClient(oauth_url={config.oauth_url!r}, client_id={config.client_id!r})"

    def authorize_url(self, state: str) -> str:
        """Where to send the operator's browser to grant us access (MTT's login page)."""
        query = urlencode(
            {
                "response_type": "code",
                "client_id": self._config.client_id,
                "redirect_uri": self._config.redirect_uri,
                "scope": SCOPE,
                "state": state,
            }
        )
        return f"{self._config.oauth_url.rstrip('/')}/oauth/authorize?{query}"

    async def exchange_code(self, code: str, *, timeout_s: float = 10) -> TokenResponse:
        """Redeem the ``code`` from the OAuth callback for an access and a refresh token."""
        return await self._token(
            {
                "grant_type": "authorization_code",
                "client_id": self._config.client_id,
                "client_secret": self._config.client_secret,
                "code": code,
                "redirect_uri": self._config.redirect_uri,
                "scope": SCOPE,
            },
            timeout_s,
        )

    async def refresh(self, refresh_token: str, *, timeout_s: float = 10) -> TokenResponse:
        """Trade ``refresh_token`` for new tokens; :class:`InvalidGrantError` if MTT refuses it."""
        return await self._token(
            {
                "grant_type": "refresh_token",
                "client_id": self._config.client_id,
                "client_secret": self._config.client_secret,
                "refresh_token": refresh_token,
            },
            timeout_s,
        )

    async def _token(self, form: dict[str, str], timeout_s: float) -> TokenResponse:
        loop = asyncio.get_running_loop()
        started = loop.time()
        code = "timeout"
        try:
            # asyncio.timeout is exact; aiohttp's ClientTimeout would round 5 s and more up.
            async with (
                asyncio.timeout(timeout_s),
                # Never follow a redirect: a 307 would resend client_secret and the grant.
                self._session.post(
                    self._token_url,
                    data=form,
                    headers={"Accept": "application/json"},
                    allow_redirects=False,
                ) as resp,
            ):
                raw = await resp.read()
                status = resp.status
                code = str(status)
        except TimeoutError:
            raise UpstreamTimeoutError(
                f"{TOKEN_METHOD}: no answer within {timeout_s:g} s", method=TOKEN_METHOD
            ) from None
        except aiohttp.ClientError as exc:
            code = "connection"
            raise connection_error(exc, TOKEN_METHOD) from exc
        finally:
            self._metrics.api_requests.labels(TOKEN_METHOD, code).inc()
            self._metrics.api_request_seconds.labels(TOKEN_METHOD).observe(loop.time() - started)
        if status == 200:
            return _token_response(raw)
        raise _token_error(status, raw)


def _token_response(raw: bytes) -> TokenResponse:
    data = decode_json(raw)
    if not isinstance(data, dict):
        raise ServerError(f"{TOKEN_METHOD}: answer is not a JSON object", method=TOKEN_METHOD)
    try:
        return token_response(data)
    except ValueError:
        raise ServerError(
            f"{TOKEN_METHOD}: answer has no access_token", method=TOKEN_METHOD
        ) from None


def _token_error(status: int, raw: bytes) -> UpstreamError:
    data = decode_json(raw)
    kind = data.get("error") if isinstance(data, dict) else None
    kind = kind if isinstance(kind, str) else ""
    message = error_message(raw)
    text = f"{TOKEN_METHOD}: MTT answered {status}" + (f": {message}" if message else "")
    if kind == "invalid_grant":
        return InvalidGrantError(text, method=TOKEN_METHOD, status=status)
    if status == 401 or kind == "invalid_client":
        return AuthError(text, method=TOKEN_METHOD, status=status)
    if 400 <= status < 500:
        return ClientRequestError(text, method=TOKEN_METHOD, status=status, mtt_message=message)
    return ServerError(text, method=TOKEN_METHOD, status=status, retryable=status >= 500)
