"""The executor seam: run one *work unit* over many payloads, locally or on a cluster.

A work unit is built once per worker by a picklable factory (locally: once; on Ray: once per
actor, so an embedded model is loaded once per actor, not per item) and then called with one
payload at a time, many at once::

    class Upper:                                   # a work unit
        async def __call__(self, payload: str) -> str:
            return payload.upper()
        async def aclose(self) -> None: ...

    def build(services: Services) -> Upper:         # its factory (module level: picklable)
        return Upper()

    async for outcome in LocalExecutor().map(build, [("a", "x"), ("b", "y")]):
        print(outcome.key, outcome.result, outcome.error)

``map`` pulls payloads only as slots free up, so a caller that stops yielding (a cost cap)
stops the run cleanly: what is in flight finishes, nothing new starts. Every payload yields
exactly one ``Outcome``: its result, or the error that its unit raised (or, on a cluster, the
loss of its worker more often than ``max_attempts`` allows). Outcomes come in completion order.

``Services`` are what every worker of one run shares: one concurrency limiter per endpoint and
an optional response cache. On a cluster they are actors, so the limits hold for the whole
cluster, not per worker.
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from moakit.models.base import Completion

P = TypeVar("P")
R = TypeVar("R")
P_contra = TypeVar("P_contra", contravariant=True)
R_co = TypeVar("R_co", covariant=True)


class WorkUnit(Protocol[P_contra, R_co]):
    async def __call__(self, payload: P_contra, /) -> R_co: ...

    async def aclose(self) -> None: ...


class EndpointLimits(Protocol):
    """One concurrency limiter per endpoint, shared by every worker of a run. ``acquire``
    waits for a slot (at once for an endpoint without a limit); ``release`` gives one back."""

    async def acquire(self, endpoint: str) -> None: ...

    async def release(self, endpoint: str) -> None: ...


class Gate:
    """One endpoint's slot as a reusable async context manager (what
    ``ConcurrencyLimitedModel`` expects)."""

    def __init__(self, limits: EndpointLimits, endpoint: str) -> None:
        self.limits = limits
        self.endpoint = endpoint

    async def __aenter__(self) -> None:
        await self.limits.acquire(self.endpoint)

    async def __aexit__(self, *exc: object) -> None:
        await self.limits.release(self.endpoint)


class SharedCache(Protocol):
    """Successful completions by request key, shared by every worker of a run.

    ``claim(key)`` returns the stored completion, or None: then the caller computes it and must
    ``put`` or ``release`` the key. Concurrent claims of one key wait for the first claimer, so
    identical requests cost one call across the whole run."""

    async def claim(self, key: str) -> Completion | None: ...

    async def put(self, key: str, model: str, completion: Completion, latency_s: float) -> None: ...

    async def release(self, key: str) -> None: ...


@dataclass(frozen=True)
class Services:
    limits: EndpointLimits
    cache: SharedCache | None = None


# Builds a worker's unit (sync or async). Must be picklable for a cluster executor: a
# module-level function or class, or a functools.partial of one.
WorkerFactory = Callable[[Services], WorkUnit[P, R] | Awaitable[WorkUnit[P, R]]]
Payloads = Iterable[tuple[str, P]] | AsyncIterable[tuple[str, P]]


@dataclass(frozen=True)
class Outcome(Generic[P, R]):
    """What became of one payload: ``result`` or ``error`` (never both)."""

    key: str
    payload: P
    result: R | None
    error: str | None = None
    worker: str = "local"
    attempts: int = 1


class Executor(ABC):
    """Runs a work unit over payloads. Subclasses: ``LocalExecutor``, ``RayExecutor``."""

    name: str = "executor"

    @abstractmethod
    def map(
        self, factory: WorkerFactory[P, R], payloads: Payloads[P]
    ) -> AsyncIterator[Outcome[P, R]]:
        """Every payload's outcome, in completion order (see the module docstring)."""

    async def aclose(self) -> None:  # noqa: B027  (optional: most executors hold nothing)
        """Release what the executor holds across runs (a cluster connection)."""


async def build_unit(factory: WorkerFactory[P, R], services: Services) -> WorkUnit[P, R]:
    unit = factory(services)
    if inspect.isawaitable(unit):
        unit = await unit
    return unit


async def aiter_payloads(payloads: Payloads[P]) -> AsyncIterator[tuple[str, P]]:
    if isinstance(payloads, AsyncIterable):
        async for item in payloads:
            yield item
    else:
        for item in payloads:
            yield item


def describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
