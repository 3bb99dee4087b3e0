"""Working-hour schedules: syntax and is_open (router.rules.schedule)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone

import pytest

from router.rules import Schedule, load_rules
from router.rules.schedule import (
    ScheduleSyntaxError,
    parse_date,
    parse_hours,
    parse_time_range,
    parse_weekdays,
)

# 2027-01-04 is a Monday; 2027-01-01 a Friday.
MON, TUE, FRI, SAT, SUN = (date(2027, 1, d) for d in (4, 5, 8, 9, 10))


def schedule(body: str, tz: str = "Europe/Moscow") -> Schedule:
    """The schedule ``s`` of a minimal rules file whose schedule section is ``body``."""
    indented = "\n".join("    " + line for line in body.strip().splitlines())
    text = f"version: 1\ntimezone: {tz}\nschedules:\n  s:\n{indented}\n"
    return load_rules(text).schedules["s"]


def at(day: date, hh: int, mm: int = 0) -> datetime:
    """Naive local time on ``day``: taken as rules-local time by is_open."""
    return datetime(day.year, day.month, day.day, hh, mm)


@pytest.mark.parametrize(
    ("text", "days"),
    [
        ("mon-fri", (0, 1, 2, 3, 4)),
        ("sat", (5,)),
        ("sun", (6,)),
        ("mon,wed", (0, 2)),
        ("mon-wed,fri", (0, 1, 2, 4)),
        ("fri-mon", (0, 4, 5, 6)),
        ("Mon-Fri", (0, 1, 2, 3, 4)),
        ("mon, wed", (0, 2)),
        ("mon-sun", (0, 1, 2, 3, 4, 5, 6)),
    ],
)
def test_weekday_syntax(text: str, days: tuple[int, ...]) -> None:
    """Weekday keys: single days, ranges, lists, wrapping ranges, any case."""
    assert parse_weekdays(text) == days


@pytest.mark.parametrize("text", ["mon-fry", "monday", "", "mon-", "1-5", "mon,mon-wed"])
def test_bad_weekdays(text: str) -> None:
    """Unknown names, empty parts and a day listed twice are refused."""
    with pytest.raises(ScheduleSyntaxError):
        parse_weekdays(text)


@pytest.mark.parametrize(
    ("text", "span"),
    [
        ("09:00-18:00", (540, 1080)),
        ("9:30 - 18:15", (570, 1095)),
        ("00:00-24:00", (0, 1440)),
        ("22:00-06:00", (1320, 1800)),
        ("23:00-00:00", (1380, 1440)),
    ],
)
def test_time_ranges(text: str, span: tuple[int, int]) -> None:
    """Ranges in minutes; an end before the start runs past midnight."""
    assert parse_time_range(text) == span


@pytest.mark.parametrize(
    "text", ["25:00-14:00", "09:60-10:00", "24:00-01:00", "24:30-24:30", "10:00-10:00", "9-18", ""]
)
def test_bad_time_ranges(text: str) -> None:
    """Out-of-range times, empty ranges and other syntax are refused."""
    with pytest.raises(ScheduleSyntaxError):
        parse_time_range(text)


def test_several_ranges_and_off() -> None:
    """Comma-separated or listed ranges are sorted; 'off' means no hours."""
    assert parse_hours(["14:00-18:00,09:00-13:00"]) == ((540, 780), (840, 1080))
    assert parse_hours(["09:00-13:00", "14:00-18:00"]) == ((540, 780), (840, 1080))
    assert parse_hours(["off"]) == ()


def test_overlapping_ranges_are_refused() -> None:
    """Overlapping ranges on one day are a typo, not a schedule."""
    with pytest.raises(ScheduleSyntaxError, match="overlapping"):
        parse_hours(["09:00-13:00,12:00-18:00"])


@pytest.mark.parametrize("text", ["2027-13-01", "2027-1-1", "01.01.2027", "tomorrow"])
def test_bad_dates(text: str) -> None:
    """Dates must be YYYY-MM-DD."""
    with pytest.raises(ScheduleSyntaxError):
        parse_date(text)


def test_weekday_range_hours() -> None:
    """mon-fri 09:00-18:00: open from 09:00 up to (not including) 18:00 on weekdays only."""
    s = schedule('mon-fri: "09:00-18:00"')
    assert s.is_open(at(MON, 9)) is True
    assert s.is_open(at(MON, 8, 59)) is False
    assert s.is_open(at(FRI, 17, 59)) is True
    assert s.is_open(at(FRI, 18)) is False
    assert s.is_open(at(SAT, 12)) is False
    assert s.is_open(at(SUN, 12)) is False


def test_several_ranges_per_day() -> None:
    """A lunch break between two ranges is closed."""
    s = schedule('mon,wed: "10:00-13:00,14:00-17:00"\nsat: ["10:00-12:00", "13:00-14:00"]')
    assert s.is_open(at(MON, 12, 59)) is True
    assert s.is_open(at(MON, 13, 30)) is False
    assert s.is_open(at(MON, 14)) is True
    assert s.is_open(at(TUE, 11)) is False
    assert s.is_open(at(SAT, 12, 30)) is False
    assert s.is_open(at(SAT, 13, 30)) is True


def test_overnight_range_belongs_to_its_start_day() -> None:
    """fri 22:00-06:00 runs from Friday evening into Saturday morning, not Thursday night."""
    s = schedule('fri: "22:00-06:00"')
    assert s.is_open(at(FRI, 21, 59)) is False
    assert s.is_open(at(FRI, 23)) is True
    assert s.is_open(at(SAT, 5, 59)) is True
    assert s.is_open(at(SAT, 6)) is False
    assert s.is_open(at(FRI, 1)) is False  # Thursday had no night shift
    assert s.is_open(at(SAT, 23)) is False


def test_overnight_range_on_sunday_continues_into_monday() -> None:
    """The week wraps: a Sunday night shift is still open early on Monday."""
    s = schedule('sun: "20:00-02:00"')
    assert s.is_open(at(MON, 1, 30)) is True
    assert s.is_open(at(MON, 2)) is False


def test_whole_day_with_24_00() -> None:
    """00:00-24:00 is open the whole day and nothing of the next."""
    s = schedule('sat: "00:00-24:00"')
    assert s.is_open(at(SAT, 0)) is True
    assert s.is_open(at(SAT, 23, 59)) is True
    assert s.is_open(at(SUN, 0)) is False


def test_except_dates_have_no_hours() -> None:
    """No shift starts on an except date; other days keep their hours."""
    s = schedule('mon-fri: "09:00-18:00"\nexcept: ["2027-01-08", 2027-01-05]')
    assert s.is_open(at(FRI, 10)) is False
    assert s.is_open(at(TUE, 10)) is False
    assert s.is_open(at(MON, 10)) is True
    assert s.except_dates == frozenset({FRI, TUE})


def test_except_date_and_overnight_shifts() -> None:
    """A night shift that started the day before an except date runs on; one on it does not."""
    s = schedule('mon-sun: "22:00-06:00"\nexcept: ["2027-01-08"]')
    assert s.is_open(at(FRI, 3)) is True  # Thursday's shift
    assert s.is_open(at(FRI, 23)) is False  # Friday's shift is cancelled
    assert s.is_open(at(SAT, 3)) is False
    assert s.is_open(at(SAT, 23)) is True


@pytest.mark.parametrize("month", [1, 7])
def test_moscow_time_has_no_dst(month: int) -> None:
    """Moscow is UTC+3 all year: 09:00 MSK is 06:00 UTC in winter and in summer."""
    s = schedule('mon-sun: "09:00-18:00"')
    assert s.is_open(datetime(2027, month, 5, 6, 0, tzinfo=UTC)) is True
    assert s.is_open(datetime(2027, month, 5, 5, 59, tzinfo=UTC)) is False
    assert s.is_open(datetime(2027, month, 5, 14, 59, tzinfo=UTC)) is True
    assert s.is_open(datetime(2027, month, 5, 15, 0, tzinfo=UTC)) is False


def test_utc_time_is_converted_across_midnight() -> None:
    """Friday 21:30 UTC is Saturday 00:30 in Moscow: Saturday's hours apply."""
    s = schedule('sat: "00:00-01:00"')
    assert s.is_open(datetime(2027, 1, 8, 21, 30, tzinfo=UTC)) is True
    assert s.is_open(datetime(2027, 1, 8, 20, 30, tzinfo=UTC)) is False


def test_other_offsets_are_converted() -> None:
    """An aware datetime in any offset is compared in the rules timezone."""
    s = schedule('mon-fri: "09:00-18:00"')
    vladivostok = timezone(timedelta(hours=10))
    assert s.is_open(datetime(2027, 1, 4, 16, 0, tzinfo=vladivostok)) is True  # 09:00 MSK
    assert s.is_open(datetime(2027, 1, 4, 15, 59, tzinfo=vladivostok)) is False


def test_dst_timezone_uses_local_wall_clock() -> None:
    """In a timezone with DST the schedule follows the local wall clock."""
    s = schedule('mon-sun: "09:00-18:00"', tz="Europe/Berlin")
    assert s.is_open(datetime(2027, 7, 5, 7, 0, tzinfo=UTC)) is True  # 09:00 CEST
    assert s.is_open(datetime(2027, 1, 5, 7, 0, tzinfo=UTC)) is False  # 08:00 CET


def test_text_describes_weekly_hours() -> None:
    """The text used in reasons lists the weekly hours as written."""
    s = schedule('mon-fri: "09:00-13:00,14:00-18:00"\nsat: off\nsun: "22:00-06:00"')
    assert s.text == "mon-fri 09:00-13:00,14:00-18:00; sat off; sun 22:00-06:00"
    assert schedule("except: []").text == "no working hours"
