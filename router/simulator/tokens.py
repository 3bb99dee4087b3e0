"""The simulated authorisation server's state: codes, access and refresh tokens, grant counts.

Codes are single-use; refresh tokens rotate (each refresh issues a new one and the old one stops
working), which is what the daemon's single-flight refresh must survive. No I/O here.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from router.mtt.tokens import TokenResponse
from router.simulator.config import SimConfig
from router.simulator.wire import IdMaker

_PRUNE_AT = 1024


class OAuthRefusal(Exception):
    """The token or authorize endpoint refuses; ``error`` is the OAuth 2.0 error code."""

    def __init__(self, status: int, error: str, description: str) -> None:
        self.status = status
        self.error = error
        self.description = description
        super().__init__(f"{error}: {description}")


@dataclass(frozen=True, slots=True)
class _Code:
    redirect_uri: str
    scope: str
    expires_at: float


class TokenAuthority:
    """Issues, rotates, checks and revokes tokens on a monotonic clock."""

    def __init__(
        self, config: SimConfig, ids: IdMaker, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.config = config
        self._ids = ids
        self._clock = clock
        self.codes: dict[str, _Code] = {}
        self.access: dict[str, float] = {}
        self.refresh: dict[str, float] = {}
        self.grants: Counter[str] = Counter()
        """Tokens issued, by grant: ``authorization_code``, ``refresh_token``, ``direct``."""
        self.refusals: Counter[str] = Counter()
        """Token/authorize refusals, by OAuth error code."""

    def reset(self) -> None:
        """Forget every code and token and the counts."""
        self.codes.clear()
        self.access.clear()
        self.refresh.clear()
        self.grants.clear()
        self.refusals.clear()

    # -- authorize ------------------------------------------------------------------------

    def authorize(self, query: Mapping[str, str]) -> str:
        """Check an authorize request and return a fresh code (there is no login page)."""
        try:
            return self._authorize(query)
        except OAuthRefusal as exc:
            self.refusals[exc.error] += 1
            raise

    def _authorize(self, query: Mapping[str, str]) -> str:
        if query.get("client_id") != self.config.client_id:
            raise OAuthRefusal(400, "invalid_client", "unknown client_id")
        redirect_uri = query.get("redirect_uri", "")
        parts = urlsplit(redirect_uri)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise OAuthRefusal(400, "invalid_request", "redirect_uri must be an absolute URL")
        allowed = self.config.redirect_uri
        if allowed is not None and redirect_uri.rstrip("/") != allowed.rstrip("/"):
            raise OAuthRefusal(400, "invalid_request", "redirect_uri is not the registered one")
        if query.get("response_type") != "code":
            raise OAuthRefusal(400, "unsupported_response_type", "response_type must be code")
        code = self._ids.token()
        self.codes[code] = _Code(
            redirect_uri, query.get("scope", ""), self._clock() + self.config.code_ttl_s
        )
        return code

    # -- token ----------------------------------------------------------------------------

    def grant(self, form: Mapping[str, str]) -> TokenResponse:
        """Answer ``POST /oauth/token``; raise :class:`OAuthRefusal` as MTT would refuse."""
        try:
            return self._grant(form)
        except OAuthRefusal as exc:
            self.refusals[exc.error] += 1
            raise

    def _grant(self, form: Mapping[str, str]) -> TokenResponse:
        if (
            form.get("client_id") != self.config.client_id
            or form.get("client_secret") != self.config.client_secret
        ):
            raise OAuthRefusal(401, "invalid_client", "client_id or client_secret is wrong")
        grant_type = form.get("grant_type")
        now = self._clock()
        if grant_type == "authorization_code":
            code = self.codes.pop(form.get("code", ""), None)
            if code is None or code.expires_at <= now:
                raise OAuthRefusal(400, "invalid_grant", "code is unknown, used or expired")
            if form.get("redirect_uri", "").rstrip("/") != code.redirect_uri.rstrip("/"):
                raise OAuthRefusal(400, "invalid_grant", "redirect_uri differs from authorize")
            return self._issue("authorization_code", self.config.code_grant_scope)
        if grant_type == "refresh_token":
            expires_at = self.refresh.pop(form.get("refresh_token", ""), None)
            if expires_at is None or expires_at <= now:
                raise OAuthRefusal(
                    400, "invalid_grant", "refresh_token is unknown, used or expired"
                )
            return self._issue("refresh_token", self.config.refresh_grant_scope)
        raise OAuthRefusal(400, "unsupported_grant_type", f"grant_type {grant_type!r}")

    def issue_direct(self) -> TokenResponse:
        """A valid token pair without the OAuth dance, for tests that only need to be authorised."""
        return self._issue("direct", self.config.refresh_grant_scope)

    def _issue(self, grant: str, scope: str) -> TokenResponse:
        now = self._clock()
        if len(self.access) > _PRUNE_AT:
            self.access = {t: at for t, at in self.access.items() if at > now}
        access, refresh = self._ids.token(), self._ids.token()
        self.access[access] = now + self.config.access_ttl_s
        self.refresh[refresh] = now + self.config.refresh_ttl_s
        self.grants[grant] += 1
        return {
            "access_token": access,
            "expires_in": max(1, math.ceil(self.config.access_ttl_s)),
            "refresh_token": refresh,
            "scope": scope,
            "token_type": "Bearer",
        }

    # -- bearer checks and fault knobs ----------------------------------------------------

    def check(self, authorization: str | None) -> str | None:
        """``None`` when the ``Authorization`` header carries a live token, else why not."""
        if not authorization:
            return "missing bearer token"
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return "malformed Authorization header"
        expires_at = self.access.get(token.strip())
        if expires_at is None:
            return "unknown access token"
        if expires_at <= self._clock():
            return "access token expired"
        return None

    def revoke_access(self) -> int:
        """Forget every access token (as if MTT dropped its sessions); return how many."""
        count = len(self.access)
        self.access.clear()
        return count

    def expire_access(self) -> int:
        """Make every access token expire now; return how many."""
        now = self._clock()
        self.access = dict.fromkeys(self.access, now)
        return len(self.access)

    def revoke_refresh(self) -> int:
        """Forget every refresh token and code, so the next refresh gets ``invalid_grant``."""
        count = len(self.refresh)
        self.refresh.clear()
        self.codes.clear()
        return count
