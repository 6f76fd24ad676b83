"""Observers: the one way to tap a run. The CLI, the server, a trace recorder, a live UI and the
evaluation harness each pass one to ``Stack.events``/``Stack.run`` instead of re-implementing
the event loop."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable, Sequence

from moakit.events import Event

log = logging.getLogger("moakit.engine")

# A plain callable, or an object whose ``async def __call__(self, event)`` is awaited in turn.
Observer = Callable[[Event], Awaitable[None] | None]


class Observers:
    """Delivers every event to every observer, in order. An observer that raises is logged once
    and detached: a broken trace sink must never break the answer."""

    __slots__ = ("_live",)

    def __init__(self, observers: Sequence[Observer]) -> None:
        self._live = list(observers)

    def __bool__(self) -> bool:
        return bool(self._live)

    async def notify(self, event: Event) -> None:
        for observer in tuple(self._live):
            try:
                outcome = observer(event)
                if inspect.isawaitable(outcome):
                    await outcome
            except Exception:
                log.exception(
                    "observer %r raised on %s; detached from the run",
                    observer,
                    type(event).__name__,
                )
                self._live.remove(observer)
