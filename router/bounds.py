"""What a bounded in-process map reports: how full it is, and its limit (``/status`` "bounds").

Every map keyed by what the internet sends (call ids, addresses, workplaces from notifications)
has a limit by count and by time; :meth:`router.services.Services.bounds` collects them so an
operator, the soak benchmark and the flood test can see each one at or under its limit.
"""

from __future__ import annotations

from typing import NamedTuple, Protocol, runtime_checkable


class Bound(NamedTuple):
    """Entries held now, and the most there can be."""

    size: int
    max: int


@runtime_checkable
class Bounded(Protocol):
    """A map with a limit."""

    def bound(self) -> Bound:
        """Entries held now, and the most there can be."""
        ...
