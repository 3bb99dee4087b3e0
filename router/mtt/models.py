"""Typed results of the MTT API, parsed leniently from every variant MTT's document shows.

The document disagrees with itself: the terminals list is ``terminalsList`` in its table and
``terminals_list`` in its example (with a ``terminale`` typo for ``terminal``), the count is
``total`` or ``Total``, a number's ``type`` is ``null``, and ``setParkingNumbers`` answers
``{"success": 1}`` with no ``result``. Each parser accepts them all; entries it cannot read are
skipped (and counted in ``skipped``) rather than failing the whole answer.
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


def _entries(result: Any, keys: tuple[str, ...]) -> list[Any]:
    """The list under any of ``keys`` (or ``result`` itself when it is already a list)."""
    if isinstance(result, list):
        return result
    if isinstance(result, dict):
        found = _first(result, keys)
        if isinstance(found, list):
            return found
    return []


@dataclass(frozen=True, slots=True)
class Parsed(Generic[T]):
    """Parsed items and how many entries were skipped as unreadable."""

    items: list[T]
    skipped: int


def _parse(
    result: Any, keys: tuple[str, ...], one: Callable[[dict[str, Any]], T | None]
) -> Parsed[T]:
    items: list[T] = []
    skipped = 0
    for entry in _entries(result, keys):
        item = one(entry) if isinstance(entry, dict) else None
        if item is None:
            skipped += 1
        else:
            items.append(item)
    return Parsed(items, skipped)


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
