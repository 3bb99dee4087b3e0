"""Which parked calls are live (transferred) and which are shadow (decided, logged, released).

``routing.mode: shadow`` makes every call shadow: the daemon decides it exactly as live mode would,
logs the would-be manager, and releases the call to the PBX at once (terminateCall), so the client
rings where he would without us. With ``mode: live``, ``routing.live_numbers`` (when set) limits
the live calls to those external numbers, so a company goes live one line at a time. Both are
re-read on SIGHUP (:meth:`Rollout.set`): going live, or back to shadow, needs no restart.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any, Literal

from router.numbers import try_normalize

Mode = Literal["live", "shadow"]


class Rollout:
    """The live/shadow switch; one per process, read on every parked call."""

    def __init__(self, mode: Mode = "live", live_numbers: Sequence[str] = ()) -> None:
        self.mode: Mode = mode
        self.live_numbers: tuple[str, ...] = ()
        self._live: frozenset[str] = frozenset()
        self.set(mode, live_numbers)

    def set(self, mode: Mode, live_numbers: Sequence[str]) -> bool:
        """Switch to ``mode`` with ``live_numbers``; True when anything changed."""
        live = frozenset(n for n in map(try_normalize, live_numbers) if n is not None)
        changed = (mode, live, bool(live_numbers)) != (
            self.mode,
            self._live,
            bool(self.live_numbers),
        )
        self.mode, self.live_numbers, self._live = mode, tuple(live_numbers), live
        return changed

    def is_live(self, callee: str | None) -> bool:
        """True when a parked call to ``callee`` (normalised) is transferred, not shadowed."""
        if self.mode == "shadow":
            return False
        # Configured numbers that all fail to read make nothing live, never everything.
        return not self.live_numbers or callee in self._live

    def status(self, numbers: Collection[str] | None) -> dict[str, Any]:
        """For ``/status``: the mode, the configured live numbers, and each known number's state."""
        shown = sorted(numbers) if numbers is not None else []
        return {
            "mode": self.mode,
            "live_numbers": list(self.live_numbers),
            "numbers": {n: "live" if self.is_live(try_normalize(n)) else "shadow" for n in shown},
        }
