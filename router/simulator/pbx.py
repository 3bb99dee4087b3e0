"""The virtual PBX being simulated: numbers, parking, workplaces, terminals, who is on a call.

Pure state, no I/O: the call engine asks it where the PBX would send a call, the API handlers
read it for the ``*Info`` answers.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from router.numbers import try_normalize
from router.simulator.config import SimConfig


class Pbx:
    """One MTT Business account's PBX settings and the live "on a call" state of workplaces."""

    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.numbers: list[str] = []
        self.parked: set[str] = set()
        self.workplaces: dict[str, str] = {}
        self.terminals: dict[str, str] = {}
        self.routes: dict[str, tuple[str, ...]] = {}
        self.answer_overrides: dict[str, float | None] = {}
        self.on_call: dict[str, int] = {}
        self._index: dict[str, str] = {}
        self.reset()

    def reset(self) -> None:
        """Back to the configured settings, nobody on a call."""
        c = self.config
        self.set_numbers(c.numbers)
        self.parked = set(c.numbers) if c.parked == "all" else set(c.parked)
        self.workplaces = {w: c.name_of(w) for w in c.workplaces}
        self.terminals = c.terminal_map()
        self.routes = dict(c.routes)
        self.answer_overrides = dict(c.answer_overrides)
        self.on_call = {}

    # -- numbers and parking --------------------------------------------------------------

    def set_numbers(self, numbers: Iterable[str]) -> None:
        """Replace the external numbers (parking of the numbers kept stays as it was)."""
        self.numbers = list(dict.fromkeys(numbers))
        self._index = {try_normalize(n) or n: n for n in self.numbers}
        self.parked &= set(self.numbers)

    def find_number(self, raw: str) -> str | None:
        """The external number ``raw`` denotes (any spelling), or ``None``."""
        return self._index.get(try_normalize(raw) or raw)

    def is_parked(self, number: str) -> bool:
        """Whether calls to ``number`` wait for a command."""
        return number in self.parked

    def set_parking(self, numbers: Iterable[str], on: bool) -> list[str]:
        """Switch parking for ``numbers``; return those not ours (and then change nothing)."""
        found: list[str] = []
        unknown: list[str] = []
        for raw in numbers:
            number = self.find_number(raw)
            if number is None:
                unknown.append(raw)
            else:
                found.append(number)
        if unknown:
            return unknown
        if on:
            self.parked.update(found)
        else:
            self.parked.difference_update(found)
        return []

    # -- workplaces -------------------------------------------------------------------------

    def set_workplaces(self, workplaces: Mapping[str, str]) -> None:
        """Replace the workplaces (SIP ID -> name); terminals follow one per workplace."""
        self.workplaces = dict(workplaces)
        self.terminals = {w: w for w in self.workplaces}
        self.routes = {
            n: tuple(w for w in route if w in self.workplaces) for n, route in self.routes.items()
        }

    def set_answer(self, workplace: str, after_ms: float | None) -> None:
        """Make ``workplace`` answer after ``after_ms`` (``None``: never answer)."""
        self.answer_overrides[workplace] = after_ms

    def clear_answer(self, workplace: str) -> None:
        """Back to the configured answer behaviour for ``workplace``."""
        self.answer_overrides.pop(workplace, None)

    def answer_after_ms(
        self, workplace: str, per_call: Mapping[str, float | None] | None = None
    ) -> float | None:
        """When ``workplace`` picks up a ringing call, or ``None`` if it will not."""
        if per_call and workplace in per_call:
            return per_call[workplace]
        if workplace in self.answer_overrides:
            return self.answer_overrides[workplace]
        return self.config.answer_after_ms

    def is_busy(self, workplace: str) -> bool:
        """True while ``workplace`` is connected to a call."""
        return self.on_call.get(workplace, 0) > 0

    def engage(self, workplace: str) -> None:
        """``workplace`` is now talking."""
        self.on_call[workplace] = self.on_call.get(workplace, 0) + 1

    def release(self, workplace: str) -> None:
        """``workplace`` hung up."""
        left = self.on_call.get(workplace, 0) - 1
        if left > 0:
            self.on_call[workplace] = left
        else:
            self.on_call.pop(workplace, None)

    def pick(self, number: str, exclude: Iterable[str] = ()) -> str | None:
        """The PBX's own choice for a call to ``number``: first free workplace of its route."""
        skip = set(exclude)
        for workplace in self.routes.get(number) or tuple(self.workplaces):
            if (
                workplace not in skip
                and workplace in self.workplaces
                and not self.is_busy(workplace)
            ):
                return workplace
        return None

    # -- the *Info answers ----------------------------------------------------------------

    def numbers_info(self) -> dict[str, Any]:
        """``externalNumbersInfo`` result: ``type`` is ``null`` as in the document."""
        rows = [{"number": n, "type": None} for n in self.numbers]
        return {"total": len(rows), "numbersList": rows}

    def workplaces_info(self) -> dict[str, Any]:
        """``workPlacesInfo`` result."""
        rows = [{"workplace": w, "name": name} for w, name in self.workplaces.items()]
        return {"total": len(rows), "workplacesList": rows}

    def terminals_info(self) -> dict[str, Any]:
        """``terminalsInfo`` result, under the configured list key (``terminals_list``)."""
        rows = [{"terminal": t, "workplace": w} for t, w in self.terminals.items()]
        return {"total": len(rows), self.config.terminals_key: rows}
