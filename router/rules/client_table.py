"""The rows of a ``clients_file`` as one compact, immutable table, and the fast reader of its CSV.

A dict of a million ``str -> str`` entries costs ~150 MB, and copying or freeing it is one C call
of tens of milliseconds that stalls the event loop. :class:`ClientTable` keeps each number as one
int64 in a sorted array (the digits after a leading ``1``, so ``0123`` keeps its zero) and each
manager as a 16-bit index: ~10 MB for a million rows, freed at once, pickled as two byte buffers
(the daemon's reloads run in a child process: :mod:`router.rules.load_worker`). A lookup is a binary
search. Numbers too long for an int64 go in a small dict, with the rules' own ``clients``.

:func:`read_clients` reads the CSV (``number,manager``; ``,`` ``;`` or tab; a header line and
``#`` comments allowed) with a fast path for plain digits and a known manager; every other row
takes the careful path (:func:`router.state.clients_csv.fast_normalize`), and a refused row is
``(line, message)``. A number on two rows with two different managers is refused (which one is
meant?); the same row twice is harmless.
"""

from __future__ import annotations

import csv
import io
import os
from array import array
from bisect import bisect_left
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from router.numbers import NumberError
from router.state.clients_csv import MAX_PROBLEMS, RowProblem, check_manager_id, fast_normalize

MAX_DIGITS = 18
"""Longest number kept in the array: ``10**18 + digits`` still fits an int64."""
_POW: tuple[int, ...] = tuple(int(10**n) for n in range(MAX_DIGITS + 1))
_TRUNK_8 = _POW[11] - _POW[10]  # 8XXXXXXXXXX -> 7XXXXXXXXXX, plus the leading 1 of 11 digits
_MOBILE_9 = _POW[11] + 7 * _POW[10]  # 9XXXXXXXXX -> 79XXXXXXXXX, plus the leading 1
Signature = tuple[int, int, int]
"""``(mtime_ns, size, inode)`` of a file, as the rules watcher compares them."""


def encode(number: str) -> int | None:
    """The table's key for a normalised number; ``None`` when it is too long (or not digits)."""
    if len(number) > MAX_DIGITS or not (number.isascii() and number.isdigit()):
        return None
    return _POW[len(number)] + int(number)


def decode(key: int) -> str:
    """The normalised number a key stands for."""
    return str(key)[1:]


class ClientTable(Mapping[str, str]):
    """Normalised number -> manager id, immutable; ``extra`` holds what the arrays cannot."""

    __slots__ = ("_extra", "_managers", "_names", "_numbers")

    def __init__(
        self,
        numbers: Sequence[int],
        managers: Sequence[int],
        names: tuple[str, ...],
        extra: Mapping[str, str] | None = None,
    ) -> None:
        self._numbers = numbers
        self._managers = managers
        self._names = names
        self._extra = dict(extra or {})

    @classmethod
    def build(
        cls, keys: Mapping[int, int], names: tuple[str, ...], extra: Mapping[str, str]
    ) -> ClientTable:
        """From ``{key: index into names}`` (any order)."""
        order = sorted(keys)
        code = _code(names)
        return cls(array("q", order), array(code, map(keys.__getitem__, order)), names, extra)

    def with_extra(self, extra: Mapping[str, str]) -> ClientTable:
        """The same rows plus ``extra`` (the rules' own ``clients``; they must not overlap)."""
        return ClientTable(self._numbers, self._managers, self._names, {**self._extra, **extra})

    def get(self, number: str, default: Any = None) -> Any:  # Mapping's signature
        """The manager of a normalised number, or ``default``."""
        found = self._extra.get(number)
        if found is not None:
            return found
        key = encode(number)
        if key is None:
            return default
        numbers = self._numbers
        i = bisect_left(numbers, key)
        if i < len(numbers) and numbers[i] == key:
            return self._names[self._managers[i]]
        return default

    def __getitem__(self, number: str) -> str:
        found: str | None = self.get(number)
        if found is None:
            raise KeyError(number)
        return found

    def __contains__(self, number: object) -> bool:
        return isinstance(number, str) and self.get(number) is not None

    def __iter__(self) -> Iterator[str]:
        yield from self._extra
        for key in self._numbers:
            yield decode(key)

    def __len__(self) -> int:
        return len(self._numbers) + len(self._extra)

    def __repr__(self) -> str:
        return f"<ClientTable of {len(self)} numbers>"

    def parts(self) -> tuple[Sequence[int], Sequence[int], tuple[str, ...], dict[str, str]]:
        """What the table is made of: the arrays (or memoryviews: they export their buffers, so
        :mod:`router.rules.load_worker` sends them without a copy), the names, the extra."""
        return self._numbers, self._managers, self._names, self._extra

    def __reduce__(self) -> tuple[Any, ...]:
        numbers, managers = _array("q", self._numbers), _array(_code(self._names), self._managers)
        return (ClientTable, (numbers, managers, self._names, self._extra))


def _code(names: tuple[str, ...]) -> str:
    """The array type code of manager indexes."""
    return "H" if len(names) <= 0xFFFF else "I"


def _array(code: str, values: Sequence[int]) -> array[int]:
    if isinstance(values, array):
        return values
    out = array(code)
    out.frombytes(memoryview(values).cast("B"))  # type: ignore[arg-type]  # a memoryview, as bytes
    return out


class ClientsRead(NamedTuple):
    """What reading a ``clients_file`` gave."""

    table: ClientTable
    problems: list[RowProblem]
    """Refused rows (the first :data:`MAX_PROBLEMS`), then ``(0, "N more ...")`` past them."""
    signature: Signature | None = None
    """Of the file as it was opened (``None``: the content was given, or unreadable)."""
    error: str | None = None
    """Why the file could not be read at all (then the table is empty)."""


class ClientsRequest(NamedTuple):
    """One ``clients_file`` to read: from ``path``, or ``text`` when the content travels with
    the rules; rows may name only ``managers``."""

    path: Path
    text: str | None
    managers: tuple[str, ...]


EMPTY = ClientTable(array("q"), array("H"), ())


def read_clients(request: ClientsRequest) -> ClientsRead:
    """Read and check one ``clients_file`` (blocking: the daemon calls it off its event loop)."""
    if request.text is not None:
        return _read(io.StringIO(request.text), request.managers, None)
    try:
        with open(request.path, encoding="utf-8-sig", newline="") as handle:
            st = os.fstat(handle.fileno())  # before reading: a later change is seen as one
            return _read(handle, request.managers, (st.st_mtime_ns, st.st_size, st.st_ino))
    except OSError as exc:
        return ClientsRead(EMPTY, [], None, f"cannot read {str(request.path)!r}: {exc.strerror}")
    except UnicodeDecodeError:
        return ClientsRead(EMPTY, [], None, f"{str(request.path)!r} is not UTF-8 text")


def _read(handle: io.TextIOBase, managers: tuple[str, ...], sig: Signature | None) -> ClientsRead:
    sample = handle.read(4096)
    handle.seek(0)
    first_line = next((line for line in sample.splitlines() if line.strip()), "")
    reader = csv.reader(handle, delimiter=max(",;\t", key=first_line.count))
    names = tuple(dict.fromkeys(managers))
    rows = _Rows(names)
    index = rows.index
    keys = rows.keys
    setdefault = keys.setdefault
    pow_ = _POW
    # The fast path: two cells, a known manager, plain digits not starting with 0.
    for row in reader:
        if len(row) == 2:
            number, manager = row
            at = index.get(manager)
            if at is not None and number.isdigit() and number.isascii() and number[0] != "0":
                size = len(number)
                if size == 11 and number[0] == "8":
                    key = int(number) + _TRUNK_8
                elif size == 10 and number[0] == "9":
                    key = int(number) + _MOBILE_9
                elif size <= MAX_DIGITS:
                    key = int(number) + pow_[size]
                else:
                    rows.careful(reader.line_num, row)
                    continue
                if setdefault(key, at) != at:
                    rows.conflict(reader.line_num, decode(key), at)
                continue
        rows.careful(reader.line_num, row)
    problems = rows.problems
    if rows.refused > len(problems):
        problems.append((0, f"{rows.refused - len(problems)} more refused rows not shown"))
    return ClientsRead(ClientTable.build(keys, names, rows.extra), problems, sig)


class _Rows:
    """The state of one read, and the careful path for every row the fast path did not take."""

    def __init__(self, names: tuple[str, ...]) -> None:
        self.names = names
        self.index = {name: i for i, name in enumerate(names)}
        self.keys: dict[int, int] = {}
        self.extra: dict[str, str] = {}
        self.problems: list[RowProblem] = []
        self.refused = 0
        self.data_seen = False

    def refuse(self, line: int, message: str) -> None:
        self.refused += 1
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append((line, message))

    def conflict(self, line: int, number: str, at: int) -> None:
        earlier = self.names[self.keys[k]] if (k := encode(number)) is not None else None
        earlier = earlier if earlier is not None else self.extra.get(number)
        self.refuse(
            line, f"{number} is listed again with {self.names[at]} (an earlier row says {earlier})"
        )

    def careful(self, line: int, row: list[str]) -> None:
        cells = [cell.strip() for cell in row]
        while cells and not cells[-1]:
            cells.pop()
        if not cells or cells[0].startswith("#"):
            return
        first = not (self.data_seen or self.keys or self.extra)
        self.data_seen = True
        if first and not any(ch.isdigit() for ch in cells[0]):
            return  # a header row such as "number,manager"
        if len(cells) != 2:
            self.refuse(line, f"expected 2 columns NUMBER,MANAGER, got {len(cells)}")
            return
        raw, manager = cells
        try:
            number = fast_normalize(raw)
        except NumberError as exc:
            self.refuse(line, str(exc))
            return
        at = self.index.get(manager)
        if at is None:
            try:
                check_manager_id(manager)
                self.refuse(line, f"unknown manager {manager!r}")
            except ValueError as exc:
                self.refuse(line, str(exc))
            return
        key = encode(number)
        if key is None:
            if self.extra.setdefault(number, manager) != manager:
                self.conflict(line, number, at)
        elif self.keys.setdefault(key, at) != at:
            self.conflict(line, number, at)
