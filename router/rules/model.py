"""Routing rules as frozen values: the managers, whose client is who, what happens otherwise.

Build them with :func:`router.rules.loader.load_rules`; every number in here is already in the one
normal form of :mod:`router.numbers`, and every manager id referenced exists.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from zoneinfo import ZoneInfo

from router.rules.schedule import Schedule

FORMAT_VERSION = 1

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

    @property
    def label(self) -> str:
        """``ivanov`` or ``ivanov (Иван Иванов)`` for human-readable output."""
        return f"{self.id} ({self.name})" if self.name else self.id


def _frozen(mapping: Mapping[str, str] | None) -> Mapping[str, str]:
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

    def counts(self) -> dict[str, int]:
        """Entries by kind, for the ``mtt_router_rules_entries{kind}`` gauge and status output."""
        return {
            "managers": len(self.managers),
            "clients": len(self.clients),
            "prefixes": len(self.prefixes),
            "fallback": len(self.fallback),
        }
