"""Official days off and transferred working days (rules ``calendar``, ``workdays``).

The country's calendar comes from the maintained ``holidays`` package, not a hand-kept list:
its public holidays (with the days off moved by decree) are days off, and its weekend working days
(a Saturday worked in exchange for a bridge day) are working days with the schedule's mon-fri hours.
The rules' own ``workdays`` add working days (mon-fri hours); a schedule's ``except`` still adds
days off. Built once per rules version (at load), then only set lookups: the decision stays pure.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date
from types import MappingProxyType

import holidays

YEARS_BEFORE = 1
YEARS_AFTER = 2
"""Years loaded around the current one: decisions happen now; ``rules explain --at`` may ask about
last year or the next two."""


class CalendarError(ValueError):
    """The country code is not one the ``holidays`` package knows."""


@dataclass(frozen=True, slots=True)
class Calendar:
    """Days off and working days of one country for some years, plus the rules' extra workdays."""

    country: str
    days_off: Mapping[date, str] = field(default_factory=dict)
    """Date -> the holiday's name (in English, as the package names it)."""
    weekend_workdays: frozenset[date] = frozenset()
    """Weekend days the country works (mon-fri hours)."""
    workdays: frozenset[date] = frozenset()
    """The rules' ``workdays``: extra working days (mon-fri hours), whatever the calendar says."""
    years: frozenset[int] = frozenset()
    """Years this calendar was built for."""
    decreed_years: frozenset[int] = frozenset()
    """Years for which the package knows transferred days (the year's decree is in its data)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "days_off", MappingProxyType(dict(self.days_off)))

    def day_off(self, day: date) -> str | None:
        """The holiday's name when ``day`` is an official day off (and not a rules workday)."""
        if day in self.workdays:
            return None
        return self.days_off.get(day)

    def working(self, day: date) -> bool:
        """True when ``day`` is worked with the mon-fri hours although it is a weekend day (or is
        one of the rules' ``workdays``)."""
        return day in self.workdays or day in self.weekend_workdays


def load_calendar(
    country: str | None, workdays: Iterable[date], *, around: int, years: Iterable[int] = ()
) -> Calendar:
    """The calendar of ``country`` (``None``: workdays only) for the years around ``around``."""
    wanted = set(range(around - YEARS_BEFORE, around + YEARS_AFTER + 1)) | set(years)
    extra = frozenset(workdays)
    if country is not None:
        country = country.strip().upper()
    if country is None:
        return Calendar("", workdays=extra, years=frozenset(wanted))
    try:
        found = holidays.country_holidays(country, years=sorted(wanted))
    except NotImplementedError:
        raise CalendarError(
            f'unknown calendar "{country}": use a country code the holidays package knows, e.g. RU'
        ) from None
    weekend = frozenset(getattr(found, "weekend_workdays", ()))
    decreed = {d.year for d in weekend} | {
        d.year for d, name in found.items() if "substituted" in str(name).lower()
    }
    return Calendar(
        country=country,
        days_off={d: str(name) for d, name in found.items()},
        weekend_workdays=weekend,
        workdays=extra,
        years=frozenset(wanted),
        decreed_years=frozenset(decreed),
    )
