"""``LocalExecutor``: the work unit in this process, ``concurrency`` payloads at once."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

from moakit.executors.base import (
    Executor,
    Outcome,
    P,
    Payloads,
    R,
    Services,
    WorkerFactory,
    aiter_payloads,
    build_unit,
    describe,
)
from moakit.executors.services import LocalCache, LocalLimits

log = logging.getLogger(__name__)


class LocalExecutor(Executor):
    """``limits``: calls in flight per endpoint (see ``wrappers.endpoint_key``); ``cache``: a
    response cache file shared by the run's calls (None: no cache)."""

    name = "local"

    def __init__(
        self,
        concurrency: int = 4,
        *,
        limits: Mapping[str, int] | None = None,
        cache: str | Path | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.concurrency = concurrency
        self.limits = dict(limits or {})
        self.cache_path = cache

    async def map(
        self, factory: WorkerFactory[P, R], payloads: Payloads[P]
    ) -> AsyncIterator[Outcome[P, R]]:
        cache = LocalCache(self.cache_path) if self.cache_path is not None else None
        services = Services(limits=LocalLimits(self.limits), cache=cache)
        unit = await build_unit(factory, services)
        source = aiter_payloads(payloads)
        running: dict[asyncio.Task[R], tuple[str, P]] = {}
        exhausted = False
        try:
            while True:
                while not exhausted and len(running) < self.concurrency:
                    try:
                        key, payload = await anext(source)
                    except StopAsyncIteration:
                        exhausted = True
                        break
                    running[asyncio.create_task(unit(payload))] = (key, payload)
                if not running:
                    return
                done, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    key, payload = running.pop(task)
                    exc = task.exception()
                    if exc is None:
                        yield Outcome(key, payload, task.result())
                    else:
                        yield Outcome(key, payload, None, describe(exc))
        finally:
            for task in running:
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)
            try:
                await unit.aclose()
            except Exception:  # a unit that fails to close must not hide the run's outcome
                log.exception("closing the work unit failed")
            if cache is not None:
                cache.close()
