"""What a session tells whoever watches it: which system runs, items done, what the item in
flight is doing, notes and warnings. The CLI draws it (a live bar on a terminal, a line every
few seconds otherwise: ``moakit.cli.eval_progress``); a library user passes their own
``Progress`` or gets the log.

``Eta`` is the one estimate every view shows: from the items finished *in this invocation*
(a resumed run's earlier items took no time now), so there is none before the first one, and
it counts down between items rather than freezing while a slow item runs.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Protocol

log = logging.getLogger("moakit.eval")


class Progress(Protocol):
    def note(self, message: str) -> None:
        """A line for the user: the scorer and why, a warning, a stale records file."""

    def start(self, system: str, done: int, total: int) -> None:
        """``system`` starts with ``done`` of its ``total`` items already recorded."""

    def advance(self, system: str, done: int, total: int) -> None:
        """One more item of ``system`` is recorded."""

    def activity(self, system: str, item_id: str, what: str) -> None:
        """What an item in flight is doing (``layer 1: 2/3 answered``)."""

    def tick(self) -> None:
        """Called about every half second while units run, activity or not."""

    def finish(self, system: str) -> None:
        """``system`` has no item left to run."""


class LogProgress:
    """Notes to the ``moakit.eval`` logger; nothing else."""

    def note(self, message: str) -> None:
        log.warning("%s", message) if message.startswith("warning") else log.info("%s", message)

    def start(self, system: str, done: int, total: int) -> None:
        log.info("%s: %d/%d items recorded", system, done, total)

    def advance(self, system: str, done: int, total: int) -> None:
        pass

    def activity(self, system: str, item_id: str, what: str) -> None:
        pass

    def tick(self) -> None:
        pass

    def finish(self, system: str) -> None:
        log.info("%s: done", system)


class Eta:
    """Seconds left for one system, from this invocation's own pace."""

    def __init__(self, done: int, total: int, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self.started = clock()
        self.first_done = done
        self.done = done
        self.total = total
        self.last = self.started

    def advance(self, done: int) -> None:
        self.done = done
        self.last = self.clock()

    def elapsed(self) -> float:
        return self.clock() - self.started

    def seconds_left(self) -> float | None:
        """None until an item finished here; then the pace so far times the items left, less
        the time already spent on the items in flight."""
        finished_here = self.done - self.first_done
        if finished_here <= 0:
            return None
        pace = (self.last - self.started) / finished_here
        left = pace * (self.total - self.done) - (self.clock() - self.last)
        # An item slower than the pace so far still leaves the others to do.
        return max(left, pace * max(0, self.total - self.done - 1), 0.0)


def clock_text(seconds: float | None) -> str:
    """``1:05:09``, ``4:10``; ``-`` when unknown."""
    if seconds is None:
        return "-"
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"
