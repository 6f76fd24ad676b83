"""``RayExecutor``: the work unit on Ray actors (Ray Core), results streamed back to the caller.

Why Ray Core actors, not Ray Data: a worker holds a long-lived ``Stack`` (an embedded model
loaded once per actor) and answers many payloads *at once* on its own event loop (MoA calls are
I/O-bound or batched by llama.cpp), each payload's outcome must come back as soon as it is done
so the caller can write it, resume from it and stop at a cost cap, and a worker's death must cost
only its in-flight payloads. Actors with async methods give all of that directly; Ray Data's
``map_batches`` over an actor pool is built for columnar batches through a fixed pipeline (and
brings pyarrow/pandas along), with no per-item retry or early stop of our own.

Shared services: one limiter actor (per-endpoint counted slots, a slot held by a named worker)
and, with a cache, one cache actor (claims by worker). A worker that dies has its slots and
claims given back, its in-flight payloads go back to the queue (at most ``max_attempts`` tries
each, then they come back as errors: nothing is lost), and a fresh actor takes its place.

Needs ``moakit[ray]``. ``address=None`` joins the cluster ``ray.init`` finds (``RAY_ADDRESS``)
or starts a local one; ``"auto"`` or ``"ray://head:10001"`` name one.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import ray
import ray.exceptions
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

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
from moakit.models.base import Completion

log = logging.getLogger(__name__)


@ray.remote
class _LimiterActor:
    def __init__(self, limits: Mapping[str, int], default: int | None) -> None:
        self.limits = LocalLimits(limits, default)

    async def acquire(self, endpoint: str, holder: str) -> None:
        await self.limits.acquire(endpoint, holder)

    async def release(self, endpoint: str, holder: str) -> None:
        await self.limits.release(endpoint, holder)

    async def release_holder(self, holder: str) -> int:
        return await self.limits.release_holder(holder)

    async def peak(self) -> dict[str, int]:
        return dict(self.limits.peak)


@ray.remote
class _CacheActor:
    def __init__(self, path: str | None) -> None:
        self.cache = LocalCache(path)

    async def claim(self, key: str, holder: str) -> Completion | None:
        return await self.cache.claim(key, holder)

    async def put(self, key: str, model: str, completion: Completion, latency_s: float) -> None:
        await self.cache.put(key, model, completion, latency_s)

    async def release(self, key: str) -> None:
        await self.cache.release(key)

    async def release_holder(self, holder: str) -> int:
        return self.cache.release_holder(holder)

    async def stats(self) -> dict[str, int]:
        return {"hits": self.cache.hits, "misses": self.cache.misses}

    async def close(self) -> None:
        self.cache.close()


@dataclass(frozen=True)
class RemoteLimits:
    """``EndpointLimits`` through the limiter actor; ``holder`` is the calling worker."""

    actor: Any
    holder: str = "driver"

    async def acquire(self, endpoint: str) -> None:
        await self.actor.acquire.remote(endpoint, self.holder)

    async def release(self, endpoint: str) -> None:
        await self.actor.release.remote(endpoint, self.holder)


@dataclass(frozen=True)
class RemoteCache:
    """``SharedCache`` through the cache actor; ``holder`` is the calling worker."""

    actor: Any
    holder: str = "driver"

    async def claim(self, key: str) -> Completion | None:
        found: Completion | None = await self.actor.claim.remote(key, self.holder)
        return found

    async def put(self, key: str, model: str, completion: Completion, latency_s: float) -> None:
        await self.actor.put.remote(key, model, completion, latency_s)

    async def release(self, key: str) -> None:
        await self.actor.release.remote(key)


@ray.remote
class _WorkerActor:
    """Holds one work unit (built once, on first use) and runs payloads on it concurrently."""

    def __init__(self, factory: WorkerFactory[Any, Any], services: Services, name: str) -> None:
        limits = services.limits
        cache = services.cache
        self.services = Services(
            limits=replace(limits, holder=name) if isinstance(limits, RemoteLimits) else limits,
            cache=replace(cache, holder=name) if isinstance(cache, RemoteCache) else cache,
        )
        self.factory = factory
        self.unit: Any = None

    async def ready(self) -> int:
        if self.unit is None:
            self.unit = await build_unit(self.factory, self.services)
        return os.getpid()

    async def run(self, payload: Any) -> Any:
        return await self.unit(payload)

    async def aclose(self) -> None:
        if self.unit is not None:
            await self.unit.aclose()


# The least number of payloads an actor admits at once (see ``start_worker``).
ACTOR_SLOTS = 16


async def _next(source: AsyncIterator[tuple[str, P]]) -> tuple[str, P]:
    return await anext(source)


@dataclass
class _Pending:
    key: str
    payload: Any
    attempts: int = 0


class WorkersLost(RuntimeError):
    """Every worker died and no more replacements are allowed."""


class RayExecutor(Executor):
    """``workers`` actors, each running up to ``concurrency`` payloads at once and reserving
    ``num_cpus`` CPUs. ``limits``: calls in flight per endpoint for the whole cluster
    (``default_limit`` for an endpoint not named there; None: not limited);
    ``cache``: a response-cache file on the node that runs the cache actor (the driver's, on
    a local cluster). ``max_attempts``: tries per payload across worker losses.
    ``runtime_env``: Ray's, for a cluster whose nodes lack moakit (``{"pip": ["moakit"]}``)."""

    name = "ray"

    def __init__(
        self,
        workers: int = 2,
        *,
        concurrency: int = 4,
        address: str | None = None,
        num_cpus: float = 1.0,
        limits: Mapping[str, int] | None = None,
        default_limit: int | None = None,
        cache: str | Path | None = None,
        max_attempts: int = 3,
        runtime_env: Mapping[str, Any] | None = None,
    ) -> None:
        if workers < 1 or concurrency < 1 or max_attempts < 1:
            raise ValueError("workers, concurrency and max_attempts must be at least 1")
        self.workers = workers
        self.concurrency = concurrency
        self.address = address
        self.num_cpus = num_cpus
        self.limits = dict(limits or {})
        self.default_limit = default_limit
        self.cache_path = str(Path(cache).resolve()) if cache is not None else None
        self.max_attempts = max_attempts
        self.runtime_env = dict(runtime_env) if runtime_env else None
        self._started_ray = False
        # Live workers' process ids by name (tests and operators: which process is which).
        self.worker_pids: dict[str, int] = {}
        self.workers_lost = 0
        self.startup_s = 0.0  # the last run's time to start its workers (and their units)
        self.limiter: Any = None  # the limiter actor of the current run (its peak() is useful)

    def _ensure_ray(self) -> None:
        if ray.is_initialized():
            return
        kwargs: dict[str, Any] = {"address": self.address, "include_dashboard": False}
        if self.address is None and not os.environ.get("RAY_ADDRESS"):
            # A cluster of this machine alone: keep its traffic on loopback.
            kwargs["_node_ip_address"] = "127.0.0.1"
        if self.runtime_env:
            kwargs["runtime_env"] = self.runtime_env
        ray.init(**kwargs)
        self._started_ray = True

    async def aclose(self) -> None:
        if self._started_ray and ray.is_initialized():
            ray.shutdown()
            self._started_ray = False

    async def map(
        self, factory: WorkerFactory[P, R], payloads: Payloads[P]
    ) -> AsyncIterator[Outcome[P, R]]:
        self._ensure_ray()
        # The shared services run on the driver's node: the cache file is where the caller
        # named it, and losing that node ends the run anyway.
        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
        limiter = _LimiterActor.options(  # type: ignore[attr-defined]
            num_cpus=0, scheduling_strategy=here
        ).remote(self.limits, self.default_limit)
        self.limiter = limiter
        cache = (
            _CacheActor.options(  # type: ignore[attr-defined]
                num_cpus=0, scheduling_strategy=here
            ).remote(self.cache_path)
            if self.cache_path is not None
            else None
        )
        services = Services(
            limits=RemoteLimits(limiter), cache=RemoteCache(cache) if cache is not None else None
        )
        actors: dict[str, Any] = {}
        load: dict[str, int] = {}
        serial = iter(range(1 << 30))
        replacements = self.workers * self.max_attempts

        async def start_worker() -> None:
            name = f"worker-{next(serial)}"
            actor = _WorkerActor.options(  # type: ignore[attr-defined]
                num_cpus=self.num_cpus,
                # The driver sends an actor at most ``concurrency`` payloads at once (its load
                # count); the actor's own cap only has to be no lower, also for a caller that
                # raises ``concurrency`` between the units of one long-lived map (moa eval).
                max_concurrency=max(self.concurrency, ACTOR_SLOTS) + 2,
                max_restarts=0,
            ).remote(factory, services, name)
            try:
                self.worker_pids[name] = await actor.ready.remote()
            except ray.exceptions.RayError as exc:
                ray.kill(actor)
                raise WorkersLost(f"a Ray worker could not start: {describe(exc)}") from exc
            actors[name] = actor
            load[name] = 0

        source = aiter_payloads(payloads)
        retry: collections.deque[_Pending] = collections.deque()
        running: dict[asyncio.Future[Any], tuple[_Pending, str, Any]] = {}
        exhausted = False
        # The next payload, awaited beside the running ones: a source that waits for more work
        # (a long-lived map fed from a queue) must not hold back the outcomes in flight.
        pull: asyncio.Task[tuple[str, Any]] | None = None
        try:
            started = time.perf_counter()
            await asyncio.gather(*(start_worker() for _ in range(self.workers)))
            self.startup_s = time.perf_counter() - started
            while True:
                while actors and (retry or not exhausted):
                    name = min(load, key=lambda n: load[n])
                    if load[name] >= self.concurrency:
                        break
                    if retry:
                        item = retry.popleft()
                    else:
                        if pull is None:
                            pull = asyncio.create_task(_next(source))
                            await asyncio.sleep(0)  # a ready source answers at once
                        if not pull.done():
                            break
                        ready, pull = pull, None
                        try:
                            key, payload = ready.result()
                        except StopAsyncIteration:
                            exhausted = True
                            break
                        item = _Pending(key, payload)
                    item.attempts += 1
                    ref = actors[name].run.remote(item.payload)
                    running[asyncio.ensure_future(ref)] = (item, name, ref)
                    load[name] += 1
                if not running:
                    if not actors and (retry or pull is not None):
                        raise WorkersLost("every Ray worker died")
                    if pull is None:
                        return
                waiting: set[asyncio.Future[Any]] = {*running, *([pull] if pull else [])}
                done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                lost: set[str] = set()
                for fut in done:
                    if fut is pull:
                        continue  # taken by the dispatch above
                    item, name, _ref = running.pop(fut)
                    if name in load:
                        load[name] -= 1
                    exc = fut.exception()
                    if exc is None:
                        yield Outcome(
                            item.key,
                            item.payload,
                            fut.result(),
                            worker=name,
                            attempts=item.attempts,
                        )
                    elif isinstance(exc, ray.exceptions.RayActorError):
                        lost.add(name)
                        if item.attempts >= self.max_attempts:
                            yield Outcome(
                                item.key,
                                item.payload,
                                None,
                                f"its Ray worker was lost {item.attempts} times ({describe(exc)})",
                                worker=name,
                                attempts=item.attempts,
                            )
                        else:
                            retry.append(item)
                    else:
                        cause = getattr(exc, "cause", None) or exc
                        yield Outcome(
                            item.key,
                            item.payload,
                            None,
                            describe(cause),
                            worker=name,
                            attempts=item.attempts,
                        )
                for name in lost:
                    if actors.pop(name, None) is None:
                        continue
                    load.pop(name, None)
                    self.worker_pids.pop(name, None)
                    self.workers_lost += 1
                    log.warning("Ray worker %s was lost; its in-flight items are retried", name)
                    await limiter.release_holder.remote(name)
                    if cache is not None:
                        await cache.release_holder.remote(name)
                    if replacements > 0:
                        replacements -= 1
                        await start_worker()
        finally:
            if pull is not None:
                pull.cancel()
                await asyncio.gather(pull, return_exceptions=True)
            for _item, _name, ref in running.values():
                ray.cancel(ref)
            closing = [actor.aclose.remote() for actor in actors.values()]
            done_closing, _ = (
                await asyncio.wait([asyncio.ensure_future(ref) for ref in closing], timeout=30)
                if closing
                else (set(), set())
            )
            for fut in done_closing:
                if fut.exception() is not None:
                    log.warning("a Ray worker failed to close: %s", describe(fut.exception()))
            for actor in actors.values():
                ray.kill(actor)
            if cache is not None:
                await cache.close.remote()
                ray.kill(cache)
            ray.kill(limiter)
            self.worker_pids.clear()
