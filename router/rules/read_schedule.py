"""One schedule of the rules file, read from the composed YAML with line numbers."""

from __future__ import annotations

from datetime import date
from zoneinfo import ZoneInfo

from yaml.nodes import Node

from router.rules.nodes import Checker, line_of
from router.rules.schedule import (
    WEEKDAYS,
    Schedule,
    ScheduleSyntaxError,
    Span,
    describe,
    parse_date,
    parse_hours,
    parse_weekdays,
)


def read_schedule(check: Checker, name: str, node: Node, timezone: ZoneInfo) -> Schedule | None:
    """One entry of ``schedules``: weekday keys with hours, and ``except`` dates."""
    where = f"schedule {name}"
    days: list[tuple[Span, ...]] = [()] * 7
    day_line: dict[int, int] = {}
    entries: list[tuple[str, tuple[Span, ...]]] = []
    except_dates: set[date] = set()
    before = len(check.problems)
    for key, value in check.items(node, where):
        if key.value == "except":
            for item, text in check.texts(value, f"{where}: except"):
                try:
                    except_dates.add(parse_date(text))
                except ScheduleSyntaxError as exc:
                    check.fail(item, f"{where}: {exc}")
            continue
        try:
            weekdays = parse_weekdays(key.value)
        except ScheduleSyntaxError as exc:
            check.fail(key, f"{where}: {exc}")
            continue
        hours = [text for _, text in check.texts(value, f"{where}: {key.value}")]
        try:
            spans = parse_hours(hours)
        except ScheduleSyntaxError as exc:
            check.fail(value, f"{where}: {exc}")
            continue
        for day in weekdays:
            if day in day_line:
                check.fail(key, f"{where}: {WEEKDAYS[day]} is already set on line {day_line[day]}")
                continue
            day_line[day] = line_of(key)
            days[day] = spans
        entries.append((key.value, spans))
    if len(check.problems) > before:
        return None
    return Schedule(
        name=name,
        timezone=timezone,
        days=tuple(days),
        except_dates=frozenset(except_dates),
        text=describe(entries),
    )
