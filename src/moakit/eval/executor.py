"""Where work units run: the seam between an evaluation and the machines that do its work.

An ``EvalExecutor`` takes work units (one item for one system, ``moakit.eval.worker.EvalUnit``)
and hands back one ``EvalRecord`` per unit, in the order they finish. The session plans the
units, writes every record it gets back (the only writer of a results directory) and reports
progress; the executor only runs units. ``LocalEvalExecutor`` runs them on this event loop with at
most ``parallel`` in flight, one ``Worker`` (one response cache, one set of loaded models)
shared by every system of the session. A cluster executor implements the same three methods,
builds a ``Worker`` from the picklable ``WorkerConfig`` on each node, and ships units and
records (both plain, picklable data) back and forth: ``ray_executor.RayEvalExecutor``
(``--executor ray``) is one.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable, Sequence
from typing import Protocol

from moakit.eval.cache import ResponseCache
from moakit.eval.records import EvalRecord
from moakit.eval.worker import EvalUnit, UnitActivity, WorkerConfig


class EvalExecutor(Protocol):
    def run(
        self,
        units: Sequence[EvalUnit],
        *,
        parallel: int,
        on_activity: UnitActivity | None = None,
    ) -> AsyncGenerator[EvalRecord, None]:
        """One record per unit as each finishes. Closing the iterator early (a deadline, a
        cancelled session) cancels the units still running; records already handed back are
        the caller's."""
        ...

    def cache_stats(self) -> dict[str, int]:
        """Response-cache counters of the calls made so far (hits, misses, failures, stored)."""
        ...

    async def aclose(self) -> None: ...


ExecutorFactory = Callable[[WorkerConfig], EvalExecutor]


class LocalEvalExecutor:
    """Units on this event loop, at most ``parallel`` at once."""

    def __init__(self, config: WorkerConfig) -> None:
        self.worker = config.build()

    async def run(
        self,
        units: Sequence[EvalUnit],
        *,
        parallel: int,
        on_activity: UnitActivity | None = None,
    ) -> AsyncGenerator[EvalRecord, None]:
        gate = asyncio.Semaphore(parallel)

        async def one(unit: EvalUnit) -> EvalRecord:
            async with gate:
                return await self.worker.evaluate(unit, on_activity)

        tasks = [asyncio.create_task(one(unit)) for unit in units]
        try:
            for finished in asyncio.as_completed(tasks):
                yield await finished
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def cache_stats(self) -> dict[str, int]:
        cache = self.worker.cache
        return {
            "hits": cache.hits,
            "misses": cache.misses,
            "failures": cache.failures,
            "stored": len(cache) if isinstance(cache, ResponseCache) else 0,
        }

    async def aclose(self) -> None:
        await self.worker.aclose()
