"""Working hours: weekday ranges, time ranges (several per day, overnight) and days off.

Syntax (parsed here, validated with line numbers by :mod:`router.rules.loader`):

- weekdays: ``mon``, ``mon-fri``, ``mon,wed,fri``, ``mon-wed,fri``, ``fri-mon`` (wraps past Sunday);
  English three-letter names, any case.
- hours: ``"09:00-18:00"``, ``"09:00-13:00,14:00-18:00"`` (or a YAML list of ranges); ``24:00`` may
  end a range; a range that ends before it starts (``"22:00-06:00"``) runs past midnight and
  belongs to the day it starts on; ``off`` means no hours that day.
- ``except``: dates (``YYYY-MM-DD``) on which no shift *starts*.

A range includes its start minute and excludes its end minute: ``09:00-18:00`` is open at 17:59:59
and closed at 18:00:00.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Protocol
from zoneinfo import ZoneInfo

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_DAY_INDEX = {name: i for i, name in enumerate(WEEKDAYS)}
_TIME_RANGE = re.compile(r"^(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})$")
_MINUTES_PER_DAY = 24 * 60
_OFF_WORDS = frozenset({"off", "closed", "-"})

#: (start, end) in minutes from the start day's midnight; ``end`` exceeds 1440 for overnight ranges.
Span = tuple[int, int]


class ScheduleSyntaxError(ValueError):
    """A weekday set, time range or date is not in the schedule syntax; the message says why."""


def parse_weekdays(text: str) -> tuple[int, ...]:
    """``"mon-fri"`` -> ``(0, 1, 2, 3, 4)``; raise :class:`ScheduleSyntaxError` if unreadable."""
    days: list[int] = []
    for part in text.lower().replace(" ", "").split(","):
        first, sep, last = part.partition("-")
        if first not in _DAY_INDEX or (sep and last not in _DAY_INDEX):
            context = "" if part == text else f" in {text!r}"
            raise ScheduleSyntaxError(
                f"bad weekday {part!r}{context}: use mon, tue, wed, thu, fri, sat, sun, "
                "ranges like mon-fri and lists like mon,wed"
            )
        start = _DAY_INDEX[first]
        end = _DAY_INDEX[last] if sep else start
        count = (end - start) % 7 + 1
        for offset in range(count):
            day = (start + offset) % 7
            if day in days:
                raise ScheduleSyntaxError(f"weekday {WEEKDAYS[day]} is listed twice in {text!r}")
            days.append(day)
    return tuple(sorted(days))


def _minute(hours: str, minutes: str, text: str, *, is_end: bool) -> int:
    h, m = int(hours), int(minutes)
    if m > 59 or h > 24 or (h == 24 and (m != 0 or not is_end)):
        raise ScheduleSyntaxError(f"bad time in {text!r}: use HH:MM from 00:00 to 24:00")
    return h * 60 + m


def parse_time_range(text: str) -> Span:
    """``"09:00-18:00"`` -> ``(540, 1080)``; ``"22:00-06:00"`` -> ``(1320, 1800)``."""
    match = _TIME_RANGE.match(text.strip())
    if match is None:
        raise ScheduleSyntaxError(f"bad time range {text!r}: use HH:MM-HH:MM, e.g. 09:00-18:00")
    start = _minute(match[1], match[2], text, is_end=False)
    end = _minute(match[3], match[4], text, is_end=True)
    if start == end:
        raise ScheduleSyntaxError(f"empty time range {text!r}: start equals end")
    if end < start:
        end += _MINUTES_PER_DAY  # overnight: continues on the next day
    return (start, end)


def parse_hours(values: Iterable[str]) -> tuple[Span, ...]:
    """The ranges of one weekday entry (``"09:00-13:00,14:00-18:00"`` or a list); ``off`` = none.

    Overlapping ranges are refused: they are almost always a typo (``09:00-13:00,12:00-18:00``).
    """
    values = list(values)
    spans: list[Span] = []
    for value in values:
        if value.strip().lower() in _OFF_WORDS:
            continue
        spans.extend(parse_time_range(part) for part in value.split(","))
    spans.sort()
    for (_, prev_end), (start, _) in itertools.pairwise(spans):
        if start < prev_end:
            raise ScheduleSyntaxError(f"overlapping time ranges in {', '.join(values)!r}")
    return tuple(spans)


def parse_date(text: str) -> date:
    """``"2027-01-01"`` -> ``date(2027, 1, 1)``."""
    try:
        if len(text) != 10:
            raise ValueError(text)
        return date.fromisoformat(text)
    except ValueError:
        raise ScheduleSyntaxError(f"bad date {text!r}: use YYYY-MM-DD, e.g. 2027-01-01") from None


class DayCalendar(Protocol):
    """Days off and moved working days (:class:`router.rules.calendar.Calendar`)."""

    def day_off(self, day: date) -> str | None:
        """Why ``day`` is a day off (a holiday's name), or ``None``."""
        ...

    def working(self, day: date) -> bool:
        """True when ``day`` is worked with the mon-fri hours (a moved working day)."""
        ...


@dataclass(frozen=True, slots=True)
class Schedule:
    """When a manager works, in ``timezone``; ``days[weekday]`` are spans of shifts starting then.

    ``text`` is the human-readable form used in decision reasons (``mon-fri 09:00-18:00``).
    """

    name: str
    timezone: ZoneInfo
    days: tuple[tuple[Span, ...], ...]
    except_dates: frozenset[date] = frozenset()
    text: str = ""

    def is_open(self, at: datetime) -> bool:
        """Whether ``at`` falls inside a shift; a naive ``at`` is taken as local time already."""
        if at.tzinfo is None:
            local = at.replace(tzinfo=self.timezone)
        else:
            local = at.astimezone(self.timezone)
        return self.is_open_local(local)

    def is_open_local(self, local: datetime, calendar: DayCalendar | None = None) -> bool:
        """:meth:`is_open` for a datetime already in ``timezone`` (the decision converts once).

        With a ``calendar``, its days off have no hours and its working days (a transferred
        working Saturday, the rules' ``workdays``) have the mon-fri hours (Monday's).
        """
        minute = local.hour * 60 + local.minute
        today = local.date()
        for start, end in self.spans_on(today, calendar):
            if start <= minute < end:
                return True
        # A shift that started yesterday may still run (22:00-06:00).
        yesterday_spans = self.spans_on(today - timedelta(days=1), calendar)
        if yesterday_spans and yesterday_spans[-1][1] > _MINUTES_PER_DAY:
            carried = minute + _MINUTES_PER_DAY
            for start, end in yesterday_spans:
                if start <= carried < end:
                    return True
        return False

    def spans_on(self, day: date, calendar: DayCalendar | None = None) -> tuple[Span, ...]:
        """The shifts starting on ``day``: none on a day off, Monday's on a moved working day."""
        if day in self.except_dates:
            return ()
        if calendar is not None:
            if calendar.day_off(day) is not None:
                return ()
            if calendar.working(day):
                return self.days[0]
        return self.days[day.weekday()]


def describe(entries: Iterable[tuple[str, tuple[Span, ...]]]) -> str:
    """``mon-fri 09:00-18:00; sat 10:00-14:00``: the weekly hours, for reasons and explain."""
    parts = [
        f"{days} {','.join(_fmt_span(s) for s in spans) if spans else 'off'}"
        for days, spans in entries
    ]
    return "; ".join(parts) if parts else "no working hours"


def _fmt_span(span: Span) -> str:
    start, end = span
    if end > _MINUTES_PER_DAY:
        end -= _MINUTES_PER_DAY
    return f"{start // 60:02d}:{start % 60:02d}-{end // 60:02d}:{end % 60:02d}"
