"""Fault knobs: what goes wrong, for which endpoint, how often. No I/O; the HTTP layer applies them.

Endpoints are named as in MTT's document (``transferCall``, ``workPlacesInfo``), plus ``token`` and
``authorize`` for OAuth and ``*`` for every endpoint; names match case-insensitively.

An :class:`EndpointFault` acts *before* the work by default: the request waits ``latency_ms``, then
is answered ``status`` or its connection dropped, and nothing is done (a command so answered is
classified anyway: a 5xx or a drop marks the call "maybe applied"). With ``after_apply`` the work
is done first and only its answer suffers: delayed by ``latency_ms`` (a slow answer), replaced by
``status`` or dropped, as a gateway in front of MTT failing after MTT did the work. The daemon
then cannot know a command was applied, so the simulator no longer counts a later transfer of that
call as the daemon's re-route. ``retry_after_s`` goes with ``status`` as a ``Retry-After`` header
(a 429 or a 503). ``storm_401`` answers the next N API requests 401 whatever the token, a freshly
refreshed one included (it counts requests, not tokens).
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from typing import Any, Literal

API_ENDPOINTS = (
    "externalNumbersInfo",
    "workPlacesInfo",
    "terminalsInfo",
    "makeCall",
    "terminateCall",
    "transferCall",
    "setParkingNumbers",
)
OAUTH_ENDPOINTS = ("authorize", "token")
CANONICAL = {name.lower(): name for name in (*API_ENDPOINTS, *OAUTH_ENDPOINTS, "*")}


def canonical_endpoint(name: str) -> str:
    """The document's spelling of ``name`` (``workplacesinfo`` -> ``workPlacesInfo``)."""
    try:
        return CANONICAL[name.lower()]
    except KeyError:
        raise ValueError(f"unknown endpoint {name!r}") from None


@dataclass(slots=True)
class EndpointFault:
    """What to do to requests of one endpoint."""

    latency_ms: float = 0.0
    """Hold the request this long before the work (with ``after_apply``: hold its answer)."""
    status: int | None = None
    """Answer this HTTP status instead of doing the work (with ``after_apply``: after it)."""
    drop: bool = False
    """Close the connection without answering (with ``after_apply``: once the work is done)."""
    after_apply: bool = False
    """Do the work first, then delay, replace (``status``) or drop its answer."""
    retry_after_s: float | None = None
    """Sent with ``status`` as ``Retry-After`` (seconds; a fraction is sent as it is)."""
    rate: float = 1.0
    """Fraction of requests ``status``/``drop`` apply to (latency always applies)."""
    count: int | None = None
    """Apply to this many more requests, then clear; ``None``: until cleared."""

    def __post_init__(self) -> None:
        if self.latency_ms < 0:
            raise ValueError("latency_ms must be >= 0")
        if self.status is not None and not 100 <= self.status <= 599:
            raise ValueError("status must be an HTTP status code")
        if not 0.0 <= self.rate <= 1.0:
            raise ValueError("rate must be between 0 and 1")
        if self.count is not None and self.count < 1:
            raise ValueError("count must be >= 1")
        if not isinstance(self.drop, bool) or not isinstance(self.after_apply, bool):
            raise ValueError("drop and after_apply must be true or false")
        if self.retry_after_s is not None:
            if isinstance(self.retry_after_s, bool) or not isinstance(
                self.retry_after_s, int | float
            ):
                raise ValueError("retry_after_s must be a number of seconds")
            if self.retry_after_s < 0:
                raise ValueError("retry_after_s must be >= 0")
            if self.status is None:
                raise ValueError("retry_after_s goes with a status (429 or 503)")


@dataclass(frozen=True, slots=True)
class FaultAction:
    """The verdict for one request."""

    latency_s: float = 0.0
    status: int | None = None
    drop: bool = False
    after_apply: bool = False
    retry_after_s: float | None = None


NO_FAULT = FaultAction()


class Faults:
    """The current fault settings, consumed request by request."""

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        self.endpoints: dict[str, EndpointFault] = {}
        self.storm_401 = 0
        """Answer the next N API requests 401 whatever the token."""
        self.duplicate_trying = 0
        """POST every ``trying`` this many extra times (concurrently), for dedupe tests."""

    def clear(self) -> None:
        """No faults."""
        self.endpoints.clear()
        self.storm_401 = 0
        self.duplicate_trying = 0

    @property
    def active(self) -> bool:
        """Whether any request-side fault is set (a fast path for the common case)."""
        return bool(self.endpoints or self.storm_401)

    def set(self, endpoint: str, fault: EndpointFault | None) -> None:
        """Set (or with ``None`` remove) the fault of ``endpoint``."""
        name = canonical_endpoint(endpoint)
        if fault is None:
            self.endpoints.pop(name, None)
        else:
            self.endpoints[name] = fault

    def token_endpoint_down(self, how: int | Literal["drop"] | None = 503) -> None:
        """Make ``/oauth/token`` answer status ``how`` or drop connections; ``None`` heals it."""
        if how is None:
            self.set("token", None)
        elif how == "drop":
            self.set("token", EndpointFault(drop=True))
        else:
            self.set("token", EndpointFault(status=how))

    def take_401(self) -> bool:
        """Consume one request of a 401 storm; True when this request must get 401."""
        if self.storm_401 > 0:
            self.storm_401 -= 1
            return True
        return False

    def decide(self, endpoint: str) -> FaultAction:
        """The fault for one request to ``endpoint`` (its own rule, else the ``*`` rule)."""
        name = endpoint if endpoint in self.endpoints else "*"
        fault = self.endpoints.get(name)
        if fault is None:
            return NO_FAULT
        hit = fault.rate >= 1.0 or self._rng.random() < fault.rate
        if fault.count is not None and (hit or fault.latency_ms):
            fault.count -= 1
            if fault.count <= 0:
                del self.endpoints[name]
        return FaultAction(
            latency_s=fault.latency_ms / 1000.0,
            status=fault.status if hit else None,
            drop=fault.drop and hit,
            after_apply=fault.after_apply,
            retry_after_s=fault.retry_after_s if hit else None,
        )

    def to_json(self) -> dict[str, Any]:
        """The settings, in the shape ``POST /_sim/faults`` accepts."""
        return {
            "endpoints": {name: asdict(f) for name, f in self.endpoints.items()},
            "storm_401": self.storm_401,
            "duplicate_trying": self.duplicate_trying,
        }

    def update(self, data: dict[str, Any]) -> None:
        """Apply the fault part of a ``POST /_sim/faults`` body; raise ``ValueError`` if bad."""
        if data.get("clear"):
            self.clear()
        endpoints = data.get("endpoints", {})
        if not isinstance(endpoints, dict):
            raise ValueError("endpoints must be an object")
        parsed: dict[str, EndpointFault | None] = {}
        for name, spec in endpoints.items():
            if spec is None:
                parsed[canonical_endpoint(name)] = None
            elif isinstance(spec, dict):
                try:
                    parsed[canonical_endpoint(name)] = EndpointFault(**spec)
                except TypeError as exc:
                    raise ValueError(f"endpoints.{name}: {exc}") from None
            else:
                raise ValueError(f"endpoints.{name} must be an object or null")
        if "token_endpoint_down" in data:
            how = data["token_endpoint_down"]
            if how is not None and how != "drop" and not isinstance(how, int):
                raise ValueError("token_endpoint_down must be a status, 'drop' or null")
            parsed["token"] = (
                None
                if how is None
                else EndpointFault(drop=True)
                if how == "drop"
                else EndpointFault(status=how)
            )
        storm = _count(data, "storm_401", self.storm_401)
        duplicate = _count(data, "duplicate_trying", self.duplicate_trying)
        for name, fault in parsed.items():
            self.set(name, fault)
        self.storm_401, self.duplicate_trying = storm, duplicate


def _count(data: dict[str, Any], key: str, current: int) -> int:
    value = data.get(key, current)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{key} must be a non-negative integer")
    return value
