"""Per-attempt timeouts that share the event loop's timers.

Every attempt of every call runs under a timeout: its member's ``timeout_s``, or the query's
deadline when that comes first. With ``asyncio.timeout`` each attempt schedules a timer of its
own and cancels it when the attempt answers. At a few thousand calls in flight those timers
(a push into the loop's heap, whose entries compare in Python, a handle and a context copy
each, the cancelled handles left in the heap) cost 10-20 us of the engine's ~95 us of CPU per
call (bench/engine_only.py without them, issue 25).

Timeouts of one length expire in the order they started, and timeouts that end at one moment
(a query's deadline) all expire together, so each such group waits in a FIFO queue behind a
single timer armed for its oldest entry. An attempt that ends leaves its entry behind, dropped
when it reaches the head of the queue; a queue that empties gives its timer back. Expiry
means what it means for ``asyncio.timeout``, whose code ``Expiry`` follows: the task is
cancelled and the ``async with`` block raises ``TimeoutError``; a cancellation from elsewhere
passes through unchanged.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Hashable
from types import TracebackType
from weakref import WeakKeyDictionary


class Expiry:
    """``async with timeouts.after(delay)`` (or ``.at(when)``): the block's time limit."""

    __slots__ = ("_cancelling", "_group", "_task", "expired", "when")

    def __init__(self, group: _Group, when: float) -> None:
        self._group = group
        self.when = when
        self._task: asyncio.Task[object] | None = None
        self._cancelling = 0
        self.expired = False

    async def __aenter__(self) -> Expiry:
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("a timeout needs a running task")
        self._task = task
        self._cancelling = task.cancelling()
        self._group.add(self)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        task, self._task = self._task, None
        self._group.drop_ended()
        # asyncio.Timeout.__aexit__: the cancellation is ours (turned into TimeoutError) only
        # when nobody else asked for one meanwhile.
        if self.expired and task is not None:
            cancelled = exc_type is not None and issubclass(exc_type, asyncio.CancelledError)
            if task.uncancel() <= self._cancelling and cancelled:
                raise TimeoutError from exc

    @property
    def running(self) -> bool:
        """The block has not ended (its entry still counts)."""
        return self._task is not None

    def expire(self) -> None:
        task = self._task
        if task is not None and not self.expired:
            self.expired = True
            task.cancel()


class _Group:
    """Timeouts whose ``when`` never decreases in the order they are added, behind one timer.
    It runs in one loop and holds no reference to it (see ``for_loop``)."""

    __slots__ = ("_groups", "_key", "_queue", "_timer")

    def __init__(self, groups: Timeouts, key: Hashable) -> None:
        self._groups = groups
        self._key = key
        self._queue: deque[Expiry] = deque()
        self._timer: asyncio.TimerHandle | None = None

    def add(self, expiry: Expiry) -> None:
        self._queue.append(expiry)
        if self._timer is None:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_at(expiry.when, self._fire, expiry.when)

    def drop_ended(self) -> None:
        queue = self._queue
        while queue and not queue[0].running:
            queue.popleft()
        if not queue:
            # Nothing left to time: the armed timer goes (it refers to the loop, which would
            # otherwise outlive its run through the loop's entry in ``_BY_LOOP``).
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self._groups.forget(self._key, self)

    def _fire(self, armed_for: float) -> None:
        # A timer may run a hair before its time (the loop's clock resolution): what it was
        # armed for is due, as asyncio's own timeout handle would be.
        loop = asyncio.get_running_loop()
        due = max(armed_for, loop.time())
        queue = self._queue
        while queue and (queue[0].when <= due or not queue[0].running):
            queue.popleft().expire()
        if queue:
            head = queue[0].when
            self._timer = loop.call_at(head, self._fire, head)
        else:
            self._timer = None
            self._groups.forget(self._key, self)


class Timeouts:
    """The groups of one event loop (``for_loop``), used from inside it."""

    def __init__(self) -> None:
        self._groups: dict[Hashable, _Group] = {}

    def after(self, delay: float) -> Expiry:
        """Expires ``delay`` seconds from now (grouped with every other ``delay`` timeout)."""
        when = asyncio.get_running_loop().time() + delay
        return Expiry(self._group(("after", delay)), when)

    def at(self, when: float) -> Expiry:
        """Expires at ``when`` (the loop's clock, ``time.monotonic``)."""
        return Expiry(self._group(("at", when)), when)

    def _group(self, key: Hashable) -> _Group:
        group = self._groups.get(key)
        if group is None:
            group = self._groups[key] = _Group(self, key)
        return group

    def forget(self, key: Hashable, group: _Group) -> None:
        if self._groups.get(key) is group:
            del self._groups[key]


_BY_LOOP: WeakKeyDictionary[asyncio.AbstractEventLoop, Timeouts] = WeakKeyDictionary()


def for_loop() -> Timeouts:
    """The running loop's ``Timeouts``. Kept by the loop's weak reference, so nothing in them
    refers to the loop (a value that did would keep every loop, and its entry, alive)."""
    loop = asyncio.get_running_loop()
    timeouts = _BY_LOOP.get(loop)
    if timeouts is None:
        timeouts = _BY_LOOP[loop] = Timeouts()
    return timeouts
