"""The keys of rules format version 2, read from the composed YAML with line numbers.

:mod:`router.rules.loader` reads version 1 and calls these for the version-2 keys (a version-1
file that uses one is told to say ``version: 2``). Each reader reports problems on its
:class:`~router.rules.nodes.Checker` and returns ``None`` (or an empty value) after one.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from datetime import date
from pathlib import Path
from types import MappingProxyType
from typing import NamedTuple
from urllib.parse import urlsplit

from yaml.nodes import Node, ScalarNode, SequenceNode

from router.config_read import expand_env
from router.numbers import NumberError, normalize
from router.rules import calendar as calendars
from router.rules.calendar import Calendar, CalendarError
from router.rules.client_table import ClientsRead, ClientsRequest, ClientTable
from router.rules.model import DEFAULT_ORDER, Learn, Line, Lookup, NoAnswer, Otherwise
from router.rules.nodes import Checker, is_null, line_of
from router.rules.schedule import ScheduleSyntaxError, parse_date

ClientsReader = Callable[[ClientsRequest], ClientsRead]
"""Reads one ``clients_file`` (:func:`router.rules.client_table.read_clients`, or a wrapper that
keeps what it read: the daemon's watcher, ``rules push``)."""

V2_KEYS = (
    "calendar",
    "workdays",
    "clients_file",
    "learn",
    "lookup",
    "order",
    "no_answer",
    "lines",
)
"""Top-level keys only version 2 has."""
MANAGER_V2_KEYS = ("deputy", "absent")
SOURCE_NAMES = DEFAULT_ORDER
"""What ``order`` may name."""
_PLACEHOLDERS = re.compile(r"\{(\w+)\}")

ManagerRef = Callable[[Node, str], "str | None"]
"""The loader's check of a reference to a manager id (reports unknown ones)."""


def dates(check: Checker, node: Node, where: str) -> frozenset[date]:
    """A list of ``YYYY-MM-DD`` dates."""
    found: set[date] = set()
    for item, text in check.texts(node, where):
        try:
            found.add(parse_date(text))
        except ScheduleSyntaxError as exc:
            check.fail(item, f"{where}: {exc}")
    return frozenset(found)


def absences(check: Checker, node: Node, where: str) -> tuple[tuple[date, date], ...]:
    """``absent: [{from: D, to: D}, ...]``, each range in order."""
    if is_null(node):
        return ()
    if not isinstance(node, SequenceNode):  # one absence without its "- " is a mapping
        check.fail(node, f"{where} must be a list of {{from: YYYY-MM-DD, to: YYYY-MM-DD}}")
        return ()
    spans: list[tuple[date, date]] = []
    for item in node.value:
        fields = {key.value: value for key, value in check.items(item, where)}
        unknown = sorted(set(fields) - {"from", "to"})
        if unknown or "from" not in fields or "to" not in fields:
            check.fail(item, f"{where}: each absence is {{from: YYYY-MM-DD, to: YYYY-MM-DD}}")
            continue
        try:
            first = parse_date(check.text(fields["from"], f"{where}.from") or "")
            last = parse_date(check.text(fields["to"], f"{where}.to") or "")
        except ScheduleSyntaxError as exc:
            check.fail(item, f"{where}: {exc}")
            continue
        if last < first:
            check.fail(item, f"{where}: {last} is before {first}")
            continue
        spans.append((first, last))
    return tuple(sorted(spans))


def _number(check: Checker, node: Node, where: str, *, low: float, high: float) -> float | None:
    text = check.text(node, where)
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not low <= value <= high:  # NaN fails too
        check.fail(node, f"{where} must be a number from {low:g} to {high:g}, got {text!r}")
        return None
    return value


def _fields(
    check: Checker, node: Node, where: str, allowed: tuple[str, ...]
) -> dict[str, tuple[ScalarNode, Node]]:
    fields: dict[str, tuple[ScalarNode, Node]] = {}
    for key, value in check.items(node, where):
        if key.value not in allowed:
            check.fail(
                key, f'{where}: unknown key "{key.value}" (expected one of: {", ".join(allowed)})'
            )
            continue
        fields[key.value] = (key, value)
    return fields


def learn(check: Checker, node: Node, manager_ref: ManagerRef) -> Learn:
    """``learn: {min_talk_s, ttl_days, exclude}``."""
    fields = _fields(check, node, "learn", ("min_talk_s", "ttl_days", "exclude"))
    result = Learn()
    if "min_talk_s" in fields:
        value = _number(check, fields["min_talk_s"][1], "learn.min_talk_s", low=0, high=3600)
        result = Learn(value if value is not None else result.min_talk_s, result.ttl_days)
    if "ttl_days" in fields:
        value = _number(check, fields["ttl_days"][1], "learn.ttl_days", low=0.001, high=3650)
        result = Learn(result.min_talk_s, value if value is not None else result.ttl_days)
    exclude: set[str] = set()
    if "exclude" in fields and not is_null(fields["exclude"][1]):
        for item, _ in check.texts(fields["exclude"][1], "learn.exclude"):
            manager = manager_ref(item, "learn.exclude")
            if manager is not None:
                exclude.add(manager)
    return Learn(result.min_talk_s, result.ttl_days, frozenset(exclude))


def lookup(check: Checker, node: Node) -> Lookup | None:
    """``lookup: {url, headers, timeout_ms, cache_s}``; ``${VAR}`` in headers from the
    environment (checked now, so a missing variable is a load error, not a failing call)."""
    fields = _fields(check, node, "lookup", ("url", "headers", "timeout_ms", "cache_s"))
    if "url" not in fields:
        check.fail(node, "lookup: url is missing (the CRM's GET URL with {caller} and {callee})")
        return None
    url_node = fields["url"][1]
    url = check.text(url_node, "lookup.url")
    if url is None:
        return None
    parts = urlsplit(url.replace("{", "").replace("}", ""))
    if parts.scheme not in ("http", "https") or not parts.netloc:
        check.fail(url_node, f"lookup.url must be an absolute http(s) URL, got {url!r}")
        return None
    unknown = sorted(set(_PLACEHOLDERS.findall(url)) - {"caller", "callee"})
    if unknown:
        check.fail(
            url_node,
            f"lookup.url: unknown placeholder {{{unknown[0]}}} (use {{caller}} and {{callee}})",
        )
        return None
    headers: dict[str, str] = {}
    if "headers" in fields:
        for key, value in check.items(fields["headers"][1], "lookup.headers"):
            text = check.text(value, f"lookup.headers.{key.value}")
            if text is None:
                continue
            missing: list[str] = []
            headers[key.value] = expand_env(
                text, os.environ, f"lookup.headers.{key.value}", missing
            )
            for problem in missing:
                check.fail(value, problem)
    timeout_ms, cache_s = 700.0, 300.0
    if "timeout_ms" in fields:
        timeout_ms = (
            _number(check, fields["timeout_ms"][1], "lookup.timeout_ms", low=1, high=3500)
            or timeout_ms
        )
    if "cache_s" in fields:
        seconds = _number(check, fields["cache_s"][1], "lookup.cache_s", low=0, high=86400)
        cache_s = cache_s if seconds is None else seconds
    return Lookup(url, headers, int(timeout_ms), cache_s)


def no_answer(check: Checker, node: Node) -> NoAnswer:
    """``no_answer: {after_s, max_hops}``."""
    fields = _fields(check, node, "no_answer", ("after_s", "max_hops"))
    after_s, hops = NoAnswer().after_s, NoAnswer().max_hops
    if "after_s" in fields:
        after_s = (
            _number(check, fields["after_s"][1], "no_answer.after_s", low=1, high=600) or after_s
        )
    if "max_hops" in fields:
        value = _number(check, fields["max_hops"][1], "no_answer.max_hops", low=1, high=10)
        if value is not None and value != int(value):
            check.fail(fields["max_hops"][1], "no_answer.max_hops must be a whole number")
        elif value is not None:
            hops = int(value)
    return NoAnswer(after_s, hops)


def order(check: Checker, node: Node) -> tuple[str, ...] | None:
    """``order: [clients, lookup, learned, prefixes]`` (any subset, each once)."""
    names: list[str] = []
    for item, text in check.texts(node, "order"):
        if text not in SOURCE_NAMES:
            check.fail(item, f'order: unknown source "{text}" (use: {", ".join(SOURCE_NAMES)})')
        elif text in names:
            check.fail(item, f'order: "{text}" is listed twice')
        else:
            names.append(text)
    return tuple(names) if names else None


def lines(
    check: Checker,
    node: Node,
    fallback: Callable[[Node | None, str], tuple[tuple[str, ...], Otherwise]],
) -> dict[str, Line]:
    """``lines: {NUMBER: {fallback: {managers, otherwise}}}``."""
    result: dict[str, Line] = {}
    first: dict[str, int] = {}
    for key, body in check.items(node, "lines"):
        where = f'lines: "{key.value}"'
        try:
            number = normalize(key.value)
        except NumberError:
            check.fail(key, f"{where}: not a phone number")
            continue
        if number in first:
            check.fail(
                key, f"{where}: duplicate line after normalisation (first on line {first[number]})"
            )
            continue
        first[number] = line_of(key)
        fields = _fields(check, body, where, ("fallback",))
        if "fallback" not in fields:
            check.fail(key, f"{where}: fallback is missing")
            continue
        managers, otherwise = fallback(fields["fallback"][1], f"{where}.fallback")
        result[number] = Line(managers, otherwise)
    return result


def clients_file(
    check: Checker,
    node: Node,
    request: Callable[[Path], ClientsRequest],
    reader: ClientsReader,
    clients: Mapping[str, str],
) -> tuple[str | None, ClientTable | None, list[tuple[str, int, str]]]:
    """``clients_file``: its path, its rows and its problems as ``(path, line, message)``.

    ``request(path)`` says where the content comes from (the file, relative to the rules file's
    folder, or the text pushed with the rules); ``reader`` reads it."""
    name = check.text(node, "clients_file")
    if name is None:
        return None, None, []
    wanted = request(Path(name))
    read = reader(wanted)
    path = str(wanted.path)
    if read.error is not None:
        check.fail(node, f"clients_file: {read.error}")
        return path, None, []
    problems = [(path, line, message) for line, message in read.problems]
    both = [number for number in clients if number in read.table]
    if both:
        check.fail(
            node,
            f"clients_file: {len(both)} number(s) also in clients, e.g. {both[0]} "
            "(keep each number in one place)",
        )
    return path, read.table, problems


class Version2(NamedTuple):
    """What the version-2 top-level keys say (defaults when a key is absent)."""

    calendar: Calendar | None = None
    clients_file: str | None = None
    file_clients: ClientTable | None = None
    file_problems: tuple[tuple[str, int, str], ...] = ()
    learn: Learn | None = None
    lookup: Lookup | None = None
    no_answer: NoAnswer | None = None
    lines: Mapping[str, Line] = MappingProxyType({})
    order: tuple[str, ...] = DEFAULT_ORDER


def read_version2(
    check: Checker,
    top: Mapping[str, tuple[ScalarNode, Node]],
    *,
    version: int | None,
    manager_ref: ManagerRef,
    fallback: Callable[[Node | None, str], tuple[tuple[str, ...], Otherwise]],
    clients: Mapping[str, str],
    request: Callable[[Path], ClientsRequest],
    reader: ClientsReader,
    today: date,
) -> Version2:
    """Read every version-2 key present in ``top``; in a version-1 file each is an error."""
    present = [name for name in V2_KEYS if name in top]
    if version == 1:
        for name in present:
            check.fail(top[name][0], f"{name} needs version: 2 (this file says version: 1)")
        return Version2()
    node = {name: top[name][1] for name in present}
    calendar = None
    country = None
    if "calendar" in node and not is_null(node["calendar"]):
        country = check.text(node["calendar"], "calendar")
    workdays = dates(check, node["workdays"], "workdays") if "workdays" in node else frozenset()
    if country is not None or workdays:
        try:
            calendar = calendars.load_calendar(country, workdays, around=today.year)
        except CalendarError as exc:
            check.fail(node["calendar"], str(exc))
    path: str | None = None
    rows: ClientTable | None = None
    problems: list[tuple[str, int, str]] = []
    if "clients_file" in node and not is_null(node["clients_file"]):
        path, rows, problems = clients_file(check, node["clients_file"], request, reader, clients)
    return Version2(
        calendar=calendar,
        clients_file=path,
        file_clients=rows,
        file_problems=tuple(problems),
        learn=learn(check, node["learn"], manager_ref) if "learn" in node else None,
        lookup=lookup(check, node["lookup"]) if "lookup" in node else None,
        no_answer=no_answer(check, node["no_answer"]) if "no_answer" in node else None,
        lines=lines(check, node["lines"], fallback) if "lines" in node else {},
        order=(order(check, node["order"]) if "order" in node else None) or DEFAULT_ORDER,
    )
