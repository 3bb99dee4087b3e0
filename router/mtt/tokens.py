"""The OAuth token set: a value that is persisted, compared by version, and never printed.

Also the one shape of a token endpoint answer (:class:`TokenResponse`), which both the OAuth
client and the simulator's authorisation server speak, and when a set is due for a refresh.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NotRequired, TypedDict

ACCESS_REFRESH_AT = 0.8
"""Refresh the access token once this fraction of its lifetime has passed."""

REFRESH_TOKEN_TTL_S = 3 * 24 * 3600.0
"""MTT's refresh tokens live 3 calendar days (the token endpoint does not say so; the doc does)."""

REFRESH_TOKEN_MARGIN_S = 6 * 3600.0
"""Refresh at least this long (at most 20% of its lifetime) before the refresh token lapses."""


class TokenResponse(TypedDict):
    """What ``POST /oauth/token`` answers: MTT's document shows the first five keys, all present.

    Only ``access_token`` is sure: a refresh may come back without a new refresh token (not
    rotated), and ``refresh_expires_in`` is ours to fill in when a test shortens that lifetime.
    """

    access_token: str
    expires_in: NotRequired[int]
    refresh_token: NotRequired[str]
    scope: NotRequired[str]
    token_type: NotRequired[str]
    refresh_expires_in: NotRequired[int]


def token_response(data: Mapping[str, object]) -> TokenResponse:
    """A decoded token endpoint answer, checked: ``ValueError`` without an access token.

    Keys of the wrong type are left out (their defaults apply); lifetimes may be JSON numbers or
    numeric strings.
    """
    access = data.get("access_token")
    if not isinstance(access, str) or not access:
        raise ValueError("token answer has no access_token")
    answer: TokenResponse = {"access_token": access}
    refresh = data.get("refresh_token")
    if isinstance(refresh, str) and refresh:
        answer["refresh_token"] = refresh
    if expires_in := _seconds(data.get("expires_in")):
        answer["expires_in"] = expires_in
    if refresh_expires_in := _seconds(data.get("refresh_expires_in")):
        answer["refresh_expires_in"] = refresh_expires_in
    if isinstance(scope := data.get("scope"), str):
        answer["scope"] = scope
    if isinstance(token_type := data.get("token_type"), str):
        answer["token_type"] = token_type
    return answer


def _seconds(value: object) -> int:
    """A positive whole number of seconds from a JSON number or numeric string, else 0."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return 0
    try:
        seconds = int(float(value))
    except (ValueError, OverflowError):
        return 0
    return max(seconds, 0)


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

    @classmethod
    def from_answer(
        cls, data: Mapping[str, object], *, now: float | None = None, version: int = 0
    ) -> TokenSet:
        """Like :meth:`from_response`, from a decoded JSON object (checked by
        :func:`token_response`)."""
        return cls.from_response(token_response(data), now=now, version=version)

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


def next_refresh_at(tokens: TokenSet) -> float:
    """At 80% of the access lifetime, or earlier to keep the refresh token valid."""
    due = tokens.refresh_due_at()
    margin = min(REFRESH_TOKEN_MARGIN_S, 0.2 * (tokens.refresh_expires_at - tokens.obtained_at))
    keep_alive = tokens.refresh_expires_at - margin
    if keep_alive > tokens.obtained_at:  # else this set already carries a non-rotated token
        due = min(due, keep_alive)
    return due


def remaining(seconds: float) -> str:
    """A token's remaining life for people: ``in 1h 59m``, ``in 2d 23h`` or ``expired``."""
    if seconds <= 0:
        return "expired"
    minutes = int(seconds // 60)
    days, hours, mins = minutes // 1440, minutes // 60 % 24, minutes % 60
    if days:
        return f"in {days}d {hours}h"
    return f"in {hours}h {mins}m" if hours else f"in {mins}m"
