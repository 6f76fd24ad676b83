"""``RayEvalExecutor``: an evaluation's work units on Ray actors (``moa eval run --executor
ray``), through the generic ``moakit.executors.ray.RayExecutor``.

Each actor builds one ``Worker`` from the session's picklable ``WorkerConfig`` (its stacks and
an embedded model loaded once per actor, then kept for every unit that actor runs) and answers
``EvalUnit``s with ``EvalRecord``s; the session stays the only writer of the results
directory, appending each record as it streams back. The run's shared services are the
executors' own: one limiter per remote endpoint for the whole cluster (``--endpoint-limit``,
else ``--default-endpoint-limit``) and one response cache, held by one actor on the driver's
node. That cache *is* the eval's cache file (``OUT/cache.sqlite`` or ``--cache``): the same
table and the same request keys, so a local run, a Ray run and ``moa batch`` share answers.

The session runs its systems one after another (a later one reuses what an earlier one cached;
a vote needs its source's records); all of them go through one ``RayExecutor.map`` fed from a
queue, so the actors start once per session and keep their stacks and loaded models from one
system to the next, with ``parallel`` items of the running system in flight per actor. A lost
actor's units are retried on a fresh one (up to ``max_attempts`` tries each), then recorded as
errors, which the next run runs again: no unit is lost.

Not on Ray: progress inside an item (``on_activity``; only whole items are reported).
"""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from moakit.eval.cache import stored_count
from moakit.eval.records import EvalRecord
from moakit.eval.worker import EvalUnit, UnitActivity, Worker, WorkerConfig
from moakit.executors.base import Outcome, Services
from moakit.executors.ray import RayExecutor


@dataclass(frozen=True)
class CacheCounts:
    """One actor's cache counters so far (they only grow)."""

    worker: str
    hits: int
    misses: int
    failures: int


@dataclass(frozen=True)
class EvalDone:
    """What an actor hands back for one unit: its record, and the actor's counters."""

    record: EvalRecord
    counts: CacheCounts


class EvalUnitRunner:
    """The work unit on one actor: its own ``Worker``, one unit at a time per call."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.name = uuid.uuid4().hex

    async def __call__(self, unit: EvalUnit) -> EvalDone:
        record = await self.worker.evaluate(unit)
        cache = self.worker.cache
        return EvalDone(record, CacheCounts(self.name, cache.hits, cache.misses, cache.failures))

    async def aclose(self) -> None:
        await self.worker.aclose()


@dataclass(frozen=True)
class EvalWorkerFactory:
    """Builds an actor's ``EvalUnitRunner`` from the session's recipe (picklable)."""

    config: WorkerConfig

    def __call__(self, services: Services) -> EvalUnitRunner:
        return EvalUnitRunner(self.config.build(services))


class RayEvalExecutor:
    """``workers`` Ray actors for the whole session, ``parallel`` items of a system in flight
    on each. ``address``: the cluster to join (None: ``RAY_ADDRESS``, else a local one is
    started); ``executor``: a ``RayExecutor`` of your own (its limits and cache are then set
    from ``config``).

    One ``RayExecutor.map`` serves every system: it starts on the first ``run`` and is fed
    from a queue, so the actors (and the stacks and models they loaded) last the session."""

    def __init__(
        self,
        config: WorkerConfig,
        *,
        workers: int = 2,
        address: str | None = None,
        max_attempts: int = 3,
        runtime_env: Mapping[str, Any] | None = None,
        executor: RayExecutor | None = None,
    ) -> None:
        self.config = config
        self.ray = executor or RayExecutor(
            workers, address=address, max_attempts=max_attempts, runtime_env=runtime_env
        )
        # The eval's limits, cluster-wide: every remote endpoint gets one, as it does locally.
        self.ray.limits = dict(config.endpoint_limits)
        self.ray.default_limit = config.default_endpoint_limit
        self.ray.cache_path = (
            str(config.cache_path.resolve()) if config.cache_path is not None else None
        )
        self._counts: dict[str, CacheCounts] = {}
        self._inbox: asyncio.Queue[tuple[str, EvalUnit]] = asyncio.Queue()
        # Unit key -> the outbox of the run that wants its outcome; a key no run wants any
        # more (a run closed early) is skipped if not started, dropped if it comes back.
        self._routes: dict[str, asyncio.Queue[Outcome[EvalUnit, EvalDone] | BaseException]] = {}
        self._serial = itertools.count()
        self._pump: asyncio.Task[None] | None = None

    async def _payloads(self) -> AsyncIterator[tuple[str, EvalUnit]]:
        while True:
            key, unit = await self._inbox.get()
            if key in self._routes:
                yield key, unit

    async def _forward(self) -> None:
        outcomes = self.ray.map(EvalWorkerFactory(self.config), self._payloads())
        try:
            async for outcome in outcomes:
                route = self._routes.pop(outcome.key, None)
                if route is not None:
                    route.put_nowait(outcome)
        except Exception as exc:  # every Ray worker lost: each waiting run raises it
            for route in {id(r): r for r in self._routes.values()}.values():
                route.put_nowait(exc)
            self._routes.clear()
            raise

    async def run(
        self,
        units: Sequence[EvalUnit],
        *,
        parallel: int,
        on_activity: UnitActivity | None = None,
    ) -> AsyncGenerator[EvalRecord, None]:
        if self._pump is not None and self._pump.done():
            raise RuntimeError("this Ray executor has stopped") from self._pump.exception()
        # Read by the map's dispatch for every payload: this system's items per actor.
        self.ray.concurrency = max(1, parallel)
        outbox: asyncio.Queue[Outcome[EvalUnit, EvalDone] | BaseException] = asyncio.Queue()
        keys = [str(next(self._serial)) for _ in units]
        for key, unit in zip(keys, units, strict=True):
            self._routes[key] = outbox
            self._inbox.put_nowait((key, unit))
        if self._pump is None:
            self._pump = asyncio.create_task(self._forward())
        try:
            for _ in units:
                outcome = await outbox.get()
                if isinstance(outcome, BaseException):
                    raise outcome
                done = outcome.result
                if done is None:  # the unit raised, or lost its actor too often
                    yield _failed(outcome.payload, outcome.error or "the unit failed")
                    continue
                held = self._counts.get(done.counts.worker)
                if held is None or done.counts.hits + done.counts.misses >= held.hits + held.misses:
                    self._counts[done.counts.worker] = done.counts
                yield done.record
        finally:
            for key in keys:
                self._routes.pop(key, None)

    def cache_stats(self) -> dict[str, int]:
        counts = self._counts.values()
        path = self.config.cache_path
        return {
            "hits": sum(c.hits for c in counts),
            "misses": sum(c.misses for c in counts),
            "failures": sum(c.failures for c in counts),
            "stored": stored_count(path) if path is not None else 0,
        }

    async def aclose(self) -> None:
        """Stops the actors (their units in flight are dropped) and the cluster it started."""
        if self._pump is not None:
            self._pump.cancel()
            await asyncio.gather(self._pump, return_exceptions=True)
            self._pump = None
        await self.ray.aclose()


def _failed(unit: EvalUnit, error: str) -> EvalRecord:
    """The record of a unit that produced none (its worker died, or it raised): an error,
    so the next run runs it again."""
    return EvalRecord(
        item_id=unit.item.id,
        system=unit.system.name,
        kind=unit.system.kind,
        system_hash=unit.system.hash,
        error=error,
    )
