"""At most one log line per interval for a kind of event, with a count of the lines held back.

A flood of refusals or surprises must not flood the logs: the metric counts every one, the log
shows one line a second saying how many it did not show.
"""

from __future__ import annotations

import math


class LineLimiter:
    """Lets one line through per ``interval_s`` (on the caller's clock); counts the rest."""

    def __init__(self, interval_s: float = 1.0) -> None:
        self._interval_s = interval_s
        self._logged_at = -math.inf
        self._held = 0

    def allow(self, now: float) -> int | None:
        """How many lines were held back since the last one, when a line may be written at
        ``now``; ``None`` (and one more held back) when not."""
        if now - self._logged_at < self._interval_s:
            self._held += 1
            return None
        held, self._held, self._logged_at = self._held, 0, now
        return held
