"""Typed results of the MTT API, parsed leniently from every variant MTT's document shows.

The document disagrees with itself: the terminals list is ``terminalsList`` in its table and
``terminals_list`` in its example (with a ``terminale`` typo for ``terminal``), the count is
``total`` or ``Total``, a number's ``type`` is ``null``, and ``setParkingNumbers`` answers
``{"success": 1}`` with no ``result``. Each parser accepts them all; entries it cannot read are
skipped (and counted in ``skipped``) rather than failing the whole answer.

What a parser cannot vouch for is said in ``unread``: a list under a key it does not know, a
``total`` above the entries it read, entries it skipped. Such an answer is not the whole list (for
the external numbers that matters: docs/CALL_MODEL.md, "Which trying is a parked call").
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class ExternalNumber:
    """An external (PSTN) number of the account: ``externalNumbersInfo``'s ``numbersList``."""

    number: str
    type: str | None = None


@dataclass(frozen=True, slots=True)
class Workplace:
    """A workplace (РМ) with its SIP ID: ``workPlacesInfo``'s ``workplacesList``."""

    workplace: str
    name: str = ""


@dataclass(frozen=True, slots=True)
class Terminal:
    """A terminal (SIP device) and the workplace it belongs to: ``terminalsInfo``'s list."""

    terminal: str
    workplace: str | None = None


NUMBERS_KEYS = ("numbersList", "numbers_list", "numberslist", "numbers")
WORKPLACES_KEYS = ("workplacesList", "workPlacesList", "workplaces_list", "workplaces")
TERMINALS_KEYS = ("terminalsList", "terminals_list", "terminalslist", "terminals")
TOTAL_KEYS = ("total", "Total")


def _str(value: Any) -> str | None:
    """A JSON string or number as text (SIP IDs and numbers sometimes arrive as numbers)."""
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None


def _first(data: dict[str, Any], keys: Iterable[str]) -> Any:
    for key in keys:
        if key in data:
            return data[key]
    return None


def _entries(result: Any, keys: tuple[str, ...]) -> tuple[list[Any], list[str]]:
    """The list under any of ``keys`` (or ``result`` itself when it is already a list), and what
    about the answer says it may hold more than that list."""
    if isinstance(result, list):
        return result, []
    if not isinstance(result, dict):
        return [], ["no list in the answer" if result is None else "the answer is not a list"]
    unread = [
        f"unknown list key {k!r}"
        for k, v in result.items()
        if isinstance(v, list) and k not in keys
    ]
    found = _first(result, keys)
    if isinstance(found, list):
        return found, unread
    if found is not None:
        unread.append(f"the list is a {type(found).__name__}")
    return [], unread


@dataclass(frozen=True, slots=True)
class Parsed(Generic[T]):
    """Parsed items, how many entries were skipped as unreadable, and why the answer may not be
    the whole list (empty: it is)."""

    items: list[T]
    skipped: int
    unread: tuple[str, ...] = ()

    @property
    def complete(self) -> bool:
        """True when the answer was read in full."""
        return not self.unread


def _parse(
    result: Any, keys: tuple[str, ...], one: Callable[[dict[str, Any]], T | None]
) -> Parsed[T]:
    items: list[T] = []
    skipped = 0
    entries, unread = _entries(result, keys)
    for entry in entries:
        item = one(entry) if isinstance(entry, dict) else None
        if item is None:
            skipped += 1
        else:
            items.append(item)
    total = _first(result, TOTAL_KEYS) if isinstance(result, dict) else None
    if isinstance(total, int) and not isinstance(total, bool) and total > len(items):
        unread.append(f"total {total} but {len(items)} read")
    elif skipped:
        unread.append(f"{skipped} entries unreadable")
    return Parsed(items, skipped, tuple(unread))


def _number(entry: dict[str, Any]) -> ExternalNumber | None:
    number = _str(entry.get("number"))
    return ExternalNumber(number, _str(entry.get("type"))) if number else None


def _workplace(entry: dict[str, Any]) -> Workplace | None:
    workplace = _str(_first(entry, ("workplace", "workPlace", "id")))
    return Workplace(workplace, _str(entry.get("name")) or "") if workplace else None


def _terminal(entry: dict[str, Any]) -> Terminal | None:
    terminal = _str(_first(entry, ("terminal", "terminale", "id")))
    workplace = _str(_first(entry, ("workplace", "workPlace")))
    return Terminal(terminal, workplace or None) if terminal else None


def parse_numbers(result: Any) -> Parsed[ExternalNumber]:
    """``result`` of ``externalNumbersInfo``."""
    return _parse(result, NUMBERS_KEYS, _number)


def parse_workplaces(result: Any) -> Parsed[Workplace]:
    """``result`` of ``workPlacesInfo``."""
    return _parse(result, WORKPLACES_KEYS, _workplace)


def parse_terminals(result: Any) -> Parsed[Terminal]:
    """``result`` of ``terminalsInfo``."""
    return _parse(result, TERMINALS_KEYS, _terminal)


def parse_call_id(result: Any) -> str | None:
    """``result.call.id`` of ``makeCall`` (``None`` when absent)."""
    if not isinstance(result, dict):
        return None
    call = result.get("call")
    if isinstance(call, dict):
        return _str(call.get("id")) or None
    return _str(result.get("callId")) or None
