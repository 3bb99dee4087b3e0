"""The virtual PBX being simulated: numbers, parking, workplaces and their terminals, who is busy.

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
        self.answering: dict[str, str] = {}
        """Workplace -> the terminal that picks up (default: its first terminal)."""
        self.routes: dict[str, tuple[str, ...]] = {}
        self.answer_overrides: dict[str, float | None] = {}
        self.declines: dict[str, float] = {}
        """Workplace -> after how many ms it declines a ringing call."""
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
        self.answering = dict(c.answering_terminals)
        self.routes = dict(c.routes)
        self.answer_overrides = dict(c.answer_overrides)
        self.declines = dict(c.decline_overrides)
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
        """Replace the workplaces (SIP ID -> name); a new workplace gets a same-ID terminal."""
        self.workplaces = dict(workplaces)
        self.terminals = {t: w for t, w in self.terminals.items() if w in self.workplaces}
        named = set(self.terminals.values())
        self.terminals.update({w: w for w in self.workplaces if w not in named})
        self.routes = {
            n: tuple(w for w in route if w in self.workplaces) for n, route in self.routes.items()
        }

    def terminals_of(self, workplace: str) -> list[str]:
        """The terminals of ``workplace``, as terminalsInfo lists them."""
        return [t for t, w in self.terminals.items() if w == workplace]

    def set_terminals(self, workplace: str, terminals: Iterable[str]) -> None:
        """Give ``workplace`` exactly these terminals (the first picks up unless told otherwise)."""
        self.terminals = {t: w for t, w in self.terminals.items() if w != workplace}
        self.terminals.update(dict.fromkeys(terminals, workplace))

    def answering_terminal(self, workplace: str) -> str:
        """The terminal a call to ``workplace`` is answered on (its own ID if it has none)."""
        chosen = self.answering.get(workplace)
        if chosen is not None and self.terminals.get(chosen) == workplace:
            return chosen
        return next(iter(self.terminals_of(workplace)), workplace)

    def set_answer(self, workplace: str, after_ms: float | None) -> None:
        """Make ``workplace`` answer after ``after_ms`` (``None``: never answer)."""
        self.answer_overrides[workplace] = after_ms

    def clear_answer(self, workplace: str) -> None:
        """Back to the configured answer behaviour for ``workplace``."""
        self.answer_overrides.pop(workplace, None)

    def set_decline(self, workplace: str, after_ms: float | None) -> None:
        """Make ``workplace`` decline ringing calls after ``after_ms`` (``None``: it does not)."""
        if after_ms is None:
            self.declines.pop(workplace, None)
        else:
            self.declines[workplace] = after_ms

    def decline_after_ms(self, workplace: str) -> float | None:
        """When ``workplace`` declines a ringing call, or ``None`` if it lets it ring."""
        return self.declines.get(workplace)

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

    # ``extra`` is added to ``total``: the knob for a list longer than the answer holds.

    def numbers_info(self, extra: int = 0) -> dict[str, Any]:
        """``externalNumbersInfo`` result: ``type`` is ``null`` as in the document."""
        rows = [{"number": n, "type": None} for n in self.numbers]
        return {"total": len(rows) + extra, "numbersList": rows}

    def workplaces_info(self, extra: int = 0) -> dict[str, Any]:
        """``workPlacesInfo`` result."""
        rows = [{"workplace": w, "name": name} for w, name in self.workplaces.items()]
        return {"total": len(rows) + extra, "workplacesList": rows}

    def terminals_info(self, extra: int = 0) -> dict[str, Any]:
        """``terminalsInfo`` result, under the configured list key (``terminals_list``)."""
        rows = [{"terminal": t, "workplace": w} for t, w in self.terminals.items()]
        return {"total": len(rows) + extra, self.config.terminals_key: rows}
