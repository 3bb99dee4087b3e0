"""Routing rules as frozen values: the managers, whose client is who, what happens otherwise.

Build them with :func:`router.rules.loader.load_rules`; every number in here is already in the one
normal form of :mod:`router.numbers`, and every manager id referenced exists.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from types import MappingProxyType
from zoneinfo import ZoneInfo

from router.rules.calendar import Calendar
from router.rules.client_table import ClientTable
from router.rules.schedule import Schedule

FORMAT_VERSION = 2
"""The newest format; version 1 files stay valid as they are (rules/README.md)."""
FORMAT_VERSIONS = (1, 2)

DEFAULT_ORDER = ("clients", "lookup", "learned", "prefixes")
"""The order candidate sources are consulted in (see :mod:`router.sources`); a name with no
registered source is skipped."""


class Otherwise(enum.StrEnum):
    """What to do with a parked call when no manager is available."""

    PBX = "pbx"  # terminateCall at once: the PBX routes the call its usual way without the 5 s wait
    WAIT = "wait"  # send nothing: the PBX routes the call itself when the parking window ends


@dataclass(frozen=True, slots=True)
class Manager:
    """A person who takes calls at one workplace (РМ, a SIP ID)."""

    id: str
    workplace: str
    name: str | None = None
    schedule: Schedule | None = None  # None: always available
    deputy: str | None = None
    """Tried right after this manager when he is unavailable (version 2)."""
    absent: tuple[tuple[date, date], ...] = ()
    """Whole days away, ``(from, to)`` inclusive (version 2)."""

    @property
    def label(self) -> str:
        """``ivanov`` or ``ivanov (Иван Иванов)`` for human-readable output."""
        return f"{self.id} ({self.name})" if self.name else self.id

    def absence_on(self, day: date) -> tuple[date, date] | None:
        """The absence ``day`` falls in, if any."""
        for first, last in self.absent:
            if first <= day <= last:
                return first, last
        return None


@dataclass(frozen=True, slots=True)
class Learn:
    """``learn``: a conversation this long teaches the caller's own manager for ``ttl_days``."""

    min_talk_s: float = 10.0
    ttl_days: float = 90.0
    exclude: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Lookup:
    """``lookup``: ask the CRM (an HTTP GET) while the call is parked."""

    url: str
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    """Sent with every request; values may be secrets (``${VAR}``): never shown in a repr."""
    timeout_ms: int = 700
    cache_s: float = 300.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "headers", MappingProxyType(dict(self.headers)))


@dataclass(frozen=True, slots=True)
class NoAnswer:
    """``no_answer``: re-route a transferred call nobody picks up."""

    after_s: float = 20.0
    max_hops: int = 2


@dataclass(frozen=True, slots=True)
class Line:
    """``lines``: what one external number does differently (its fallback)."""

    fallback: tuple[str, ...] = ()
    otherwise: Otherwise = Otherwise.PBX


def _frozen(mapping: Mapping[str, str] | None) -> Mapping[str, str]:
    if isinstance(mapping, ClientTable):
        return mapping  # immutable already; a million rows are not copied
    return MappingProxyType(dict(mapping or {}))


@dataclass(frozen=True, slots=True)
class Rules:
    """One validated version of the rules.

    ``clients`` maps a normalised number to a manager id; ``prefixes`` maps a normalised prefix to
    a manager id and is searched longest first by :meth:`match_prefix`. ``digest`` identifies the
    source text (for status output and logs); it is empty for rules built in code.
    """

    version: int
    timezone: ZoneInfo
    managers: Mapping[str, Manager]
    schedules: Mapping[str, Schedule] = field(default_factory=dict)
    clients: Mapping[str, str] = field(default_factory=dict)
    prefixes: Mapping[str, str] = field(default_factory=dict)
    fallback: tuple[str, ...] = ()
    otherwise: Otherwise = Otherwise.PBX
    digest: str = ""
    order: tuple[str, ...] = DEFAULT_ORDER
    calendar: Calendar | None = None
    """Days off and moved working days (``calendar``, ``workdays``); ``None``: weekdays only."""
    clients_file: str | None = None
    """Where the ``clients_file`` entries were read from (already merged into ``clients``, then a
    :class:`~router.rules.client_table.ClientTable`)."""
    learn: Learn | None = None
    lookup: Lookup | None = None
    no_answer: NoAnswer | None = None
    lines: Mapping[str, Line] = field(default_factory=dict)
    """Normalised external number -> its own fallback."""
    # Distinct prefix lengths, longest first: a lookup tries at most one dict probe per length.
    _prefix_lengths: tuple[int, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # frozen: the constructor freezes its own mappings
        set_(self, "managers", MappingProxyType(dict(self.managers)))
        set_(self, "schedules", MappingProxyType(dict(self.schedules)))
        set_(self, "clients", _frozen(self.clients))
        set_(self, "prefixes", _frozen(self.prefixes))
        set_(self, "fallback", tuple(self.fallback))
        set_(self, "order", tuple(self.order))
        set_(self, "lines", MappingProxyType(dict(self.lines)))
        set_(self, "otherwise", Otherwise(self.otherwise))
        lengths = sorted({len(p) for p in self.prefixes}, reverse=True)
        set_(self, "_prefix_lengths", tuple(lengths))

    def match_prefix(self, number: str) -> tuple[str, str] | None:
        """``(prefix, manager id)`` of the longest prefix of the normalised ``number``, or None."""
        prefixes = self.prefixes
        size = len(number)
        for length in self._prefix_lengths:
            if length <= size:
                manager = prefixes.get(number[:length])
                if manager is not None:
                    return number[:length], manager
        return None

    def fallback_for(self, line: str | None) -> tuple[tuple[str, ...], Otherwise, bool]:
        """The fallback managers and ``otherwise`` for a call to ``line``, and whether they are
        the line's own (``lines``) rather than the top-level ones."""
        own = self.lines.get(line) if line is not None and self.lines else None
        if own is not None:
            return own.fallback, own.otherwise, True
        return self.fallback, self.otherwise, False

    def counts(self) -> dict[str, int]:
        """Entries by kind, for the ``mtt_router_rules_entries{kind}`` gauge and status output."""
        return {
            "managers": len(self.managers),
            "clients": len(self.clients),
            "prefixes": len(self.prefixes),
            "fallback": len(self.fallback),
        }
