"""What the engine needs to see of the rules, the directory and the rollout: small protocols.

The daemon passes :class:`router.rules.source.RulesHolder`, :class:`router.directory.Directory`
and :class:`router.rollout.Rollout`; tests pass fakes.
"""

from __future__ import annotations

from typing import Literal, Protocol

from router.rules.source import LoadedRules


class RulesView(Protocol):
    """The rules in use (:class:`router.rules.source.RulesHolder`)."""

    @property
    def current(self) -> LoadedRules | None:
        """The rules to decide by, or ``None`` when none are loaded."""
        ...


class RolloutView(Protocol):
    """Which calls are live (:class:`router.rollout.Rollout`); without one, every call is."""

    def is_live(self, callee: str | None) -> bool:
        """True when a parked call to ``callee`` (normalised) is transferred, not shadowed."""
        ...


class DirectoryView(Protocol):
    """What the engine needs to know of the PBX (:class:`router.directory.Directory`)."""

    @property
    def numbers(self) -> frozenset[str] | None:
        """The account's external numbers, normalised; ``None`` while unknown."""
        ...

    @property
    def workplace_ids(self) -> frozenset[str] | None:
        """The workplaces MTT lists; ``None`` before the first fetch."""
        ...

    def request_refresh(self, what: Literal["numbers", "workplaces", "all"] = "all") -> None:
        """Fetch again soon."""
        ...
