"""The OAuth token set: a value that is persisted, compared by version, and never printed."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, TypedDict

ACCESS_REFRESH_AT = 0.8
"""Refresh the access token once this fraction of its lifetime has passed."""

REFRESH_TOKEN_TTL_S = 3 * 24 * 3600.0
"""MTT's refresh tokens live 3 calendar days (the token endpoint does not say so; the doc does)."""


class TokenResponse(TypedDict, total=False):
    """What ``POST /oauth/token`` answers."""

    access_token: str
    expires_in: int
    refresh_token: str
    scope: str
    token_type: str
    refresh_expires_in: int


@dataclass(frozen=True)
class TokenSet:
    """Access and refresh tokens with their expiry times (Unix seconds) and a version number.

    ``version`` grows by one with every stored set, so that a store can refuse to overwrite a newer
    set with an older one (compare-and-set across replicas).
    """

    access_token: str = field(repr=False)
    refresh_token: str = field(repr=False)
    access_expires_at: float
    refresh_expires_at: float
    obtained_at: float
    scope: str = ""
    token_type: str = "Bearer"
    version: int = 0

    @classmethod
    def from_response(
        cls, data: TokenResponse, *, now: float | None = None, version: int = 0
    ) -> TokenSet:
        """Build from the token endpoint's JSON (``expires_in`` relative to ``now``)."""
        now = time.time() if now is None else now
        refresh_ttl = float(data.get("refresh_expires_in") or REFRESH_TOKEN_TTL_S)
        return cls(
            access_token=data["access_token"],
            refresh_token=data.get("refresh_token", ""),
            access_expires_at=now + float(data.get("expires_in") or 7200),
            refresh_expires_at=now + refresh_ttl,
            obtained_at=now,
            scope=data.get("scope", ""),
            token_type=data.get("token_type", "Bearer"),
            version=version,
        )

    def refresh_due_at(self) -> float:
        """When the access token should be refreshed (at 80% of its lifetime)."""
        return self.obtained_at + (self.access_expires_at - self.obtained_at) * ACCESS_REFRESH_AT

    def access_valid(self, now: float | None = None) -> bool:
        """True while the access token has not expired."""
        return (time.time() if now is None else now) < self.access_expires_at

    def refresh_valid(self, now: float | None = None) -> bool:
        """True while the refresh token may still be used."""
        now = time.time() if now is None else now
        return bool(self.refresh_token) and now < self.refresh_expires_at

    def to_json(self) -> dict[str, Any]:
        """The persisted form (contains secrets: only for 0600 files and Redis)."""
        return {
            "access_token": self.access_token,
            "refresh_token": self.refresh_token,
            "access_expires_at": self.access_expires_at,
            "refresh_expires_at": self.refresh_expires_at,
            "obtained_at": self.obtained_at,
            "scope": self.scope,
            "token_type": self.token_type,
            "version": self.version,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TokenSet:
        """Inverse of :meth:`to_json`; ``KeyError``/``TypeError``/``ValueError`` if broken."""
        return cls(
            access_token=str(data["access_token"]),
            refresh_token=str(data["refresh_token"]),
            access_expires_at=float(data["access_expires_at"]),
            refresh_expires_at=float(data["refresh_expires_at"]),
            obtained_at=float(data["obtained_at"]),
            scope=str(data.get("scope", "")),
            token_type=str(data.get("token_type", "Bearer")),
            version=int(data.get("version", 0)),
        )
