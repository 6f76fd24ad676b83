"""``moa eval``'s progress on stderr. On a terminal: one live bar per system with elapsed
time, an ETA from the first finished item on, and what the item in flight is doing. Otherwise
(a log file, CI, a pipe): one plain line per system every few seconds, the same facts, so a
long run is never silent. Names and item ids are printed as text (never Rich markup, never
terminal control characters)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import IO, Any

from moakit.cli.literal import one_line
from moakit.eval.progress import Eta, Progress, clock_text

DEFAULT_EVERY_S = 5.0


@contextmanager
def progress_for(stream: IO[str], *, every_s: float | None = None) -> Iterator[Progress]:
    """The view that suits ``stream``: live on a terminal, lines otherwise."""
    if stream.isatty() and every_s is None:
        live = LiveProgress(stream)
        with live:
            yield live
    else:
        yield LineProgress(stream, every_s=DEFAULT_EVERY_S if every_s is None else every_s)


class _SystemProgress:
    def __init__(self, done: int, total: int, clock: Callable[[], float]) -> None:
        self.eta = Eta(done, total, clock)
        self.done = done
        self.total = total
        self.activity = ""

    def summary(self) -> str:
        left = self.eta.seconds_left()
        eta = "" if left is None or self.done >= self.total else f", ETA {clock_text(left)}"
        now = f" · now: {self.activity}" if self.activity and self.done < self.total else ""
        return f"{self.done}/{self.total} items, {clock_text(self.eta.elapsed())} elapsed{eta}{now}"


class LineProgress:
    """``<system> <done>/<total> items, <elapsed> elapsed, ETA <left> · now: <item>: <what>``
    at most every ``every_s`` seconds per system, and at its start and end."""

    def __init__(
        self,
        stream: IO[str],
        *,
        every_s: float = DEFAULT_EVERY_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stream = stream
        self.every_s = every_s
        self.clock = clock
        self.systems: dict[str, _SystemProgress] = {}
        self.current: str | None = None
        self.printed = 0.0

    def _line(self, system: str, text: str) -> None:
        self.stream.write(one_line(f"{system} {text}") + "\n")
        self.stream.flush()
        self.printed = self.clock()

    def note(self, message: str) -> None:
        self.stream.write(one_line(message) + "\n")
        self.stream.flush()

    def start(self, system: str, done: int, total: int) -> None:
        self.systems[system] = _SystemProgress(done, total, self.clock)
        self.current = system
        self._line(system, self.systems[system].summary())

    def advance(self, system: str, done: int, total: int) -> None:
        state = self.systems[system]
        state.done, state.total = done, total
        state.eta.advance(done)
        state.activity = ""
        self.tick()

    def activity(self, system: str, item_id: str, what: str) -> None:
        if system in self.systems:
            self.systems[system].activity = f"{item_id}: {what}"

    def tick(self) -> None:
        if self.current is not None and self.clock() - self.printed >= self.every_s:
            self._line(self.current, self.systems[self.current].summary())

    def finish(self, system: str) -> None:
        state = self.systems[system]
        self._line(
            system, f"{state.done}/{state.total} items, done in {clock_text(state.eta.elapsed())}"
        )
        self.current = None


class LiveProgress:
    """Rich bars; the ETA and the activity are our own columns (Rich's speed estimate stays
    blank while items take minutes each)."""

    def __init__(self, stream: IO[str]) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            TextColumn,
            TimeElapsedColumn,
        )
        from rich.progress import (
            Progress as Bars,
        )

        self.bars = Bars(
            TextColumn("{task.fields[name]}", markup=False),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[eta]}", markup=False),
            TextColumn("{task.fields[now]}", markup=False),
            console=Console(file=stream),
        )
        self.systems: dict[str, tuple[Any, _SystemProgress]] = {}

    def __enter__(self) -> LiveProgress:
        self.bars.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bars.__exit__(None, None, None)

    def note(self, message: str) -> None:
        from rich.text import Text

        self.bars.console.print(Text(one_line(message)))

    def start(self, system: str, done: int, total: int) -> None:
        task = self.bars.add_task(
            "", total=total, completed=done, name=one_line(system), eta="", now=""
        )
        self.systems[system] = (task, _SystemProgress(done, total, time.monotonic))

    def advance(self, system: str, done: int, total: int) -> None:
        task, state = self.systems[system]
        state.done = done
        state.eta.advance(done)
        state.activity = ""
        self.bars.update(task, completed=done)
        self.tick()

    def activity(self, system: str, item_id: str, what: str) -> None:
        if system in self.systems:
            self.systems[system][1].activity = f"{item_id}: {what}"

    def tick(self) -> None:
        for task, state in self.systems.values():
            left = state.eta.seconds_left()
            eta = "" if left is None or state.done >= state.total else f"ETA {clock_text(left)}"
            now = one_line(state.activity)[:60] if state.done < state.total else ""
            self.bars.update(task, eta=eta, now=now)

    def finish(self, system: str) -> None:
        task, _ = self.systems[system]
        self.bars.update(task, eta="", now="")
