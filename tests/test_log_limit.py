"""One log line a second per kind (router.log_limit)."""

from __future__ import annotations

from router.log_limit import LineLimiter


def test_one_line_per_interval_with_the_count_held_back() -> None:
    """The first line passes; lines within the interval are held and counted into the next."""
    lines = LineLimiter(interval_s=1.0)
    assert lines.allow(10.0) == 0
    assert (lines.allow(10.2), lines.allow(10.9)) == (None, None)
    assert lines.allow(11.0) == 2
    assert lines.allow(11.5) is None
    assert lines.allow(12.5) == 1
