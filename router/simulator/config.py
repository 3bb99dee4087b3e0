"""The simulator's settings: one frozen value, defaults taken from MTT's document.

Durations of the simulated call (ringing, talk, recording) are in milliseconds so tests can make
them tiny; the parking window and token lifetimes are in seconds like MTT states them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

from router.callmodel import PARKING_WINDOW_S

DOC_CLIENT_ID = "ccb350cc-6218-40b0-b134-3d290f00b9e7"
DOC_CLIENT_SECRET = "iNmTWpDLeYkyzkUTVuCQwa"
SCOPE = "https://mtt.ru/auth.tokens.readwrite"
CODE_GRANT_SCOPE = "https://mtt.ru/auth/openapi.readwrite"
"""The document's authorization_code answer shows this other scope; we reproduce it."""

DOC_NUMBERS = ("74996497803", "78005560251")
DOC_WORKPLACES = ("883140777716581", "883140582526566", "883140777380595", "883140777446532")
DOC_WORKPLACE_NAMES: Mapping[str, str] = MappingProxyType(
    {
        "883140777716581": "Иван Иванов",
        "883140582526566": "Мария Петрова",
        "883140777380595": "Пётр Сидоров",
        "883140777446532": "",
    }
)


@dataclass(frozen=True)
class SimConfig:
    """Everything the simulator needs; the defaults play the account from MTT's document."""

    client_id: str = DOC_CLIENT_ID
    client_secret: str = field(default=DOC_CLIENT_SECRET, repr=False)
    redirect_uri: str | None = None
    """The integration's registered redirect URI; ``None`` accepts any (handy for tests)."""
    access_ttl_s: float = 7200.0
    refresh_ttl_s: float = 3 * 24 * 3600.0
    code_ttl_s: float = 600.0
    code_grant_scope: str = CODE_GRANT_SCOPE
    refresh_grant_scope: str = SCOPE

    numbers: tuple[str, ...] = DOC_NUMBERS
    parked: tuple[str, ...] | Literal["all"] = "all"
    """External numbers on parking at start ("all", or a subset of ``numbers``)."""
    workplaces: tuple[str, ...] = DOC_WORKPLACES
    workplace_names: Mapping[str, str] = field(default_factory=lambda: DOC_WORKPLACE_NAMES)
    terminals: Mapping[str, str] = field(default_factory=dict)
    """Terminal SIP ID -> workplace; empty means one terminal per workplace with the same ID
    (a workplace with no terminal listed here gets one with its own ID)."""
    answering_terminals: Mapping[str, str] = field(default_factory=dict)
    """Workplace -> the terminal that picks up its calls (default: its first terminal)."""
    routes: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    """External number -> workplaces the PBX tries in order; absent means all, config order."""
    terminals_key: str = "terminals_list"
    """terminalsInfo's list key: the document's example says this, its table ``terminalsList``."""
    centrex_id: str = "67821426"

    parking_window_s: float = PARKING_WINDOW_S
    answer_after_ms: float | None = 300.0
    """When a ringing workplace picks up; ``None`` means workplaces never answer."""
    answer_overrides: Mapping[str, float | None] = field(default_factory=dict)
    """Per workplace ``answer_after_ms`` (``None``: never answers)."""
    ring_timeout_ms: float = 3000.0
    """How long an unanswered workplace rings before ``hiding``."""
    decline_overrides: Mapping[str, float] = field(default_factory=dict)
    """Per workplace: it declines a ringing call after this many ms (``hiding`` then, as for a
    call not answered in time), unless it answers first."""
    talk_ms: float = 1000.0
    record_delay_ms: float = 50.0
    callee_answer_ms: float = 300.0
    """makeCall: how long the dialled party takes to answer once the workplace has."""
    skip_states: frozenset[str] = frozenset()
    """States recorded but not POSTed (load tests: e.g. ``{"showing", "recorded"}``)."""
    announce_unparked: bool = True
    """Send ``trying`` for calls that are not parked (MTT announces every call's start)."""

    # What MTT's document leaves open (each also a run-time knob: Simulator.quirks).
    leg_id: Literal["workplace", "number"] = "workplace"
    """``id`` of a leg at a workplace: the workplace's SIP ID (the document's table: "SIP ID
    ВАТС (если есть)") or the external number (as in the incoming ``trying`` example)."""
    trying_after_release: bool = False
    """Announce a call again (a second ``trying``) when terminateCall or the window releases it."""
    list_total_extra: int = 0
    """Add this to ``total`` in the *Info answers (a list longer than the answer holds)."""

    webhook_url: str | None = None
    """Full URL notifications are POSTed to (the daemon's ``<redirect_uri>/events``)."""
    webhook_timeout_s: float = 5.0
    webhook_connections: int = 256

    call_log_size: int = 100_000
    request_log_size: int = 10_000
    seed: int | None = None

    def __post_init__(self) -> None:
        if not self.numbers:
            raise ValueError("numbers: at least one external number is needed")
        if not self.workplaces:
            raise ValueError("workplaces: at least one workplace is needed")
        if self.parked != "all" and not set(self.parked) <= set(self.numbers):
            raise ValueError("parked: must be 'all' or a subset of numbers")
        for name in ("access_ttl_s", "refresh_ttl_s", "code_ttl_s", "parking_window_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name}: must be a positive number of seconds")
        for number, route in self.routes.items():
            if unknown := set(route) - set(self.workplaces):
                raise ValueError(f"routes.{number}: unknown workplaces {sorted(unknown)}")
        if unknown := set(self.terminals.values()) - set(self.workplaces):
            raise ValueError(f"terminals: unknown workplaces {sorted(unknown)}")
        if self.list_total_extra < 0:
            raise ValueError("list_total_extra: must be >= 0")

    def name_of(self, workplace: str) -> str:
        """The display name of ``workplace`` ("" like the document's example when unnamed)."""
        return self.workplace_names.get(workplace, "")

    def terminal_map(self) -> dict[str, str]:
        """Terminal -> workplace; a workplace no terminal names gets one with its own ID."""
        mapped = dict(self.terminals)
        named = set(mapped.values())
        mapped.update({w: w for w in self.workplaces if w not in named})
        return mapped


@dataclass(slots=True)
class Quirks:
    """The run-time knobs for what MTT's document leaves open (see :class:`SimConfig`)."""

    leg_id: Literal["workplace", "number"] = "workplace"
    trying_after_release: bool = False
    list_total_extra: int = 0

    @classmethod
    def of(cls, config: SimConfig) -> Quirks:
        """The configured knobs."""
        return cls(config.leg_id, config.trying_after_release, config.list_total_extra)

    def restore(self, config: SimConfig) -> None:
        """Back to the configured knobs (in place: the call engine holds this object)."""
        self.leg_id, self.trying_after_release = config.leg_id, config.trying_after_release
        self.list_total_extra = config.list_total_extra

    def update(self, data: Mapping[str, object]) -> None:
        """Apply a ``POST /_sim/quirks`` body; ``ValueError`` (changing nothing) when bad."""
        leg_id = data.get("leg_id", self.leg_id)
        again = data.get("trying_after_release", self.trying_after_release)
        extra = data.get("list_total_extra", self.list_total_extra)
        if leg_id not in ("workplace", "number"):
            raise ValueError("leg_id must be 'workplace' or 'number'")
        if not isinstance(again, bool):
            raise ValueError("trying_after_release must be true or false")
        if isinstance(extra, bool) or not isinstance(extra, int) or extra < 0:
            raise ValueError("list_total_extra must be a non-negative integer")
        self.leg_id = "workplace" if leg_id == "workplace" else "number"
        self.trying_after_release, self.list_total_extra = again, extra


def generated_workplaces(count: int, start: int = 883140777716581) -> tuple[str, ...]:
    """``count`` distinct SIP IDs in MTT's style, for load tests that need many workplaces."""
    return tuple(str(start + i) for i in range(count))
