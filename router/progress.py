"""Progress of long commands (``clients import``, ``replay``, ``bench``) for a person watching.

On a terminal, :class:`Bar` draws a progress bar (rich) on stderr, rewritten in place, and
:meth:`Bar.note` prints lines above it; the bar is erased when the work is done, so what stays
on the screen is the command's own output. When stderr is not a terminal (a pipe, a file, CI,
``TERM=dumb``) nothing is drawn and no control character is written: :meth:`Bar.note` prints
plain lines and :meth:`Bar.update` does nothing. The decision is ours (``isatty``), not rich's, so
``FORCE_COLOR`` in the environment does not turn a log file into a screen.

Updates may come from any thread and as often as per line read: they are passed on at most
:data:`UPDATE_EVERY_S` apart, the last one always.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Awaitable
from types import TracebackType
from typing import Literal, TextIO, TypeVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    ProgressColumn,
    SpinnerColumn,
    TaskID,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

T = TypeVar("T")

UPDATE_EVERY_S = 0.1
"""At most this often an update reaches the bar (rich redraws it 4 times a second)."""
TICK_S = 0.5
"""How often :meth:`Bar.ticking` moves a bar measured in seconds."""

Unit = Literal["share", "seconds"]


def on_terminal(stream: TextIO) -> bool:
    """True when ``stream`` is a terminal that can take a progress bar (not ``TERM=dumb``)."""
    isatty = getattr(stream, "isatty", None)
    try:
        tty = bool(isatty is not None and isatty())
    except ValueError:  # closed
        return False
    return tty and os.environ.get("TERM", "") != "dumb"


class Bar:
    """One piece of work's progress on stderr, drawn only on a terminal.

    ``total`` is in the unit of :meth:`update` (bytes, rows, seconds); ``None`` when unknown (a
    spinner and the time elapsed). ``unit="seconds"`` shows the expected time instead of the
    time remaining (the bench runs for a known time).
    """

    def __init__(
        self,
        description: str,
        total: float | None,
        *,
        unit: Unit = "share",
        stream: TextIO | None = None,
    ) -> None:
        self._stream = stream if stream is not None else sys.stderr
        self._description = description
        self._total = total
        self._last_update = 0.0
        self._progress: Progress | None = None
        self._task: TaskID | None = None
        if on_terminal(self._stream):
            console = Console(file=self._stream, force_terminal=True, highlight=False)
            self._progress = Progress(
                *_columns(total, unit),
                console=console,
                transient=True,
                redirect_stdout=False,  # stdout may be a pipe while stderr is the screen
                refresh_per_second=4,
            )

    @property
    def drawn(self) -> bool:
        """True when the bar is on a terminal (else every update is a no-op)."""
        return self._progress is not None

    def __enter__(self) -> Bar:
        if self._progress is not None:
            # The task first: the bar is drawn as the display starts, however short the work.
            self._task = self._progress.add_task(self._description, total=self._total)
            self._progress.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._progress is not None:
            self._progress.stop()

    def update(self, completed: float, total: float | None = None, *, force: bool = False) -> None:
        """``completed`` of ``total`` (or of the total given at the start) done so far."""
        if self._progress is None or self._task is None:
            return
        now = time.monotonic()
        if not force and now - self._last_update < UPDATE_EVERY_S:
            return
        self._last_update = now
        if total is not None:
            self._progress.update(self._task, completed=completed, total=total)
        else:
            self._progress.update(self._task, completed=completed)

    def note(self, line: str) -> None:
        """A line for the person: above the bar on a terminal, else as it is on stderr."""
        if self._progress is not None:
            self._progress.console.print(line, markup=False, highlight=False)
        else:
            print(line, file=self._stream, flush=True)

    async def ticking(self, work: Awaitable[T]) -> T:
        """Await ``work`` while the bar shows the seconds gone of its expected total (never
        past 99% before it is done); ``work`` as it is when nothing is drawn."""
        if self._progress is None:
            return await work
        task = asyncio.ensure_future(work)
        loop = asyncio.get_running_loop()
        started = loop.time()
        cap = None if self._total is None else 0.99 * self._total
        while not task.done():
            elapsed = loop.time() - started
            self.update(elapsed if cap is None else min(elapsed, cap), force=True)
            await asyncio.wait({task}, timeout=TICK_S)
        return task.result()


def _columns(total: float | None, unit: Unit) -> list[ProgressColumn]:
    if total is None:
        return [SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn()]
    end: ProgressColumn = (
        TextColumn(f"of ~{_clock(total)}") if unit == "seconds" else TimeRemainingColumn()
    )
    return [
        TextColumn("{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        end,
    ]


def _clock(seconds: float) -> str:
    whole = round(seconds)
    return f"{whole // 3600}:{whole // 60 % 60:02d}:{whole % 60:02d}"
