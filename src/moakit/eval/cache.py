"""The evaluation's content-addressed response cache, as a model wrapper (retries are the
engine's one loop, ``moakit.engine.calls``; the per-endpoint concurrency limit is the engine's
``moakit.models.wrappers.ConcurrencyLimitedModel``).

The cache key is the sha256 of the model's identity (provider, model, base URL, options) and the
full ``ChatRequest``, so any ablation that sends an identical request (the same proposers under a
different aggregator, Self-MoA's samples, a judge re-grading the same answer) reuses the stored
answer instead of paying for it again. Only successful, non-empty answers are stored: a failed
call is recorded by the engine in the run's result and retried on the next run, never cached.
An answer with tool calls is stored with them and served back as the same calls (same ids), so
a tool-using member's first round is paid once, and its follow-up round, whose request quotes
those ids, is then an identical request too. Identical requests get identical answers by
design: give repeated members distinct seeds.
"""

from __future__ import annotations

import asyncio
import contextvars
import sqlite3
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from moakit.executors.base import SharedCache
from moakit.executors.services import CacheStore

# One identity and one key scheme for every response cache (eval's, batch's, a cluster's).
from moakit.executors.wrappers import endpoint_key as endpoint_key
from moakit.executors.wrappers import model_identity as model_identity
from moakit.executors.wrappers import replay
from moakit.executors.wrappers import request_key as request_key
from moakit.messages import ToolCall
from moakit.models.base import ChatRequest, Chunk, Completion, Model, Usage
from moakit.models.wrappers import WrapperModel


@dataclass
class Tally:
    """What the calls made on behalf of one item did; set per item task via ``TALLY``."""

    calls: int = 0
    cache_hits: int = 0
    failures: int = 0
    first_token_s: list[float] = field(default_factory=list)


TALLY: contextvars.ContextVar[Tally | None] = contextvars.ContextVar(
    "moakit_eval_tally", default=None
)


class ResponseCache:
    """SQLite store of successful completions by request key. ``path=None`` keeps it in memory."""

    def __init__(self, path: Path | None = None) -> None:
        # The storage is the executors' (one table, one key scheme: `moa batch --cache` and a
        # Ray run share this file); this class adds eval's counters and claims.
        self._store = CacheStore(path)
        self._inflight: dict[str, asyncio.Event] = {}
        self.hits = 0
        self.misses = 0
        self.failures = 0

    def get(self, key: str) -> Completion | None:
        return self._store.get(key)

    def put(self, key: str, model: str, completion: Completion, latency_s: float) -> None:
        self._store.put(key, model, completion, latency_s)

    async def claim(self, key: str) -> Completion | None:
        """The stored answer, or None: then the caller calls the model and must ``release``
        the key (after ``store``, if it got an answer). A claim of a key another caller holds
        waits for it, so identical concurrent requests cost one call."""
        while (pending := self._inflight.get(key)) is not None:
            await pending.wait()
        hit = self.get(key)
        if hit is not None:
            self.hits += 1
            return hit
        self.misses += 1
        self._inflight[key] = asyncio.Event()
        return None

    async def store(self, key: str, model: str, completion: Completion, latency_s: float) -> None:
        self.put(key, model, completion, latency_s)

    async def release(self, key: str) -> None:
        pending = self._inflight.pop(key, None)
        if pending is not None:
            pending.set()

    def __len__(self) -> int:
        return len(self._store)

    def close(self) -> None:
        self._store.close()


class EvalCache(Protocol):
    """What ``CachedModel`` needs of a cache: this process's ``ResponseCache``, or a cluster's
    shared one (``ClusterCache``). The counters are this worker's calls."""

    hits: int
    misses: int
    failures: int

    async def claim(self, key: str) -> Completion | None: ...

    async def store(
        self, key: str, model: str, completion: Completion, latency_s: float
    ) -> None: ...

    async def release(self, key: str) -> None: ...

    def close(self) -> None: ...


class ClusterCache:
    """The eval's cache on a cluster worker: the run's one shared cache (the executors'
    ``SharedCache``: the same SQLite table and the same keys, held by one cache actor), with
    this worker's counters."""

    def __init__(self, shared: SharedCache) -> None:
        self.shared = shared
        self.hits = 0
        self.misses = 0
        self.failures = 0

    async def claim(self, key: str) -> Completion | None:
        hit = await self.shared.claim(key)
        if hit is None:
            self.misses += 1
        else:
            self.hits += 1
        return hit

    async def store(self, key: str, model: str, completion: Completion, latency_s: float) -> None:
        await self.shared.put(key, model, completion, latency_s)

    async def release(self, key: str) -> None:
        await self.shared.release(key)

    def close(self) -> None:
        """Nothing to close: the cache actor belongs to the executor."""


class CachedModel(WrapperModel):
    """Serves a stored answer for an identical request; otherwise streams the wrapped model's
    answer through and stores it once it completed. Concurrent identical requests wait for the
    first one instead of calling twice. A ``WrapperModel``, so the wrapped model's capabilities
    (prefill for a staircase aggregator, response formats) stay visible to the engine."""

    # Through this wrapper's stream, not straight to the wrapped model's complete().
    complete = Model.complete

    def __init__(
        self,
        wrapped: Model,
        cache: EvalCache,
        identity: Mapping[str, Any],
        *,
        live: bool = False,
    ) -> None:
        super().__init__(wrapped)
        self.cache = cache
        self.identity = dict(identity)
        # live: never served from the cache (the call is still counted and its answer stored),
        # for runs whose behaviour depends on the timing of a stream.
        self.live = live

    async def stream(self, request: ChatRequest) -> AsyncIterator[Chunk]:
        key = request_key(self.identity, request)
        tally = TALLY.get()
        if tally is not None:
            tally.calls += 1
        if self.live:
            async for chunk in self._through(key, request, tally):
                yield chunk
            return
        hit = await self.cache.claim(key)
        if hit is not None:
            if tally is not None:
                tally.cache_hits += 1
            for chunk in replay(hit):
                yield chunk
            return
        try:
            async for chunk in self._through(key, request, tally):
                yield chunk
        finally:
            await self.cache.release(key)

    async def _through(
        self, key: str, request: ChatRequest, tally: Tally | None
    ) -> AsyncIterator[Chunk]:
        """The wrapped model's stream, passed on as it comes; stored once it completed."""
        started = time.monotonic()
        parts: list[str] = []
        calls: list[ToolCall] = []
        finish: str | None = None
        usage = Usage()
        try:
            async for chunk in self.wrapped.stream(request):
                # The answer's first token: its first text, or its tool calls (they come whole).
                first = (chunk.text or chunk.tool_calls) and not (parts or calls)
                if first and tally is not None:
                    tally.first_token_s.append(time.monotonic() - started)
                calls.extend(chunk.tool_calls)
                if chunk.text:
                    parts.append(chunk.text)
                if chunk.finish_reason is not None:
                    finish = chunk.finish_reason
                if chunk.usage is not None:
                    usage = chunk.usage
                yield chunk
        except BaseException:
            self.cache.failures += 1
            if tally is not None:
                tally.failures += 1
            raise
        else:
            completion = Completion(
                text="".join(parts), finish_reason=finish, usage=usage, tool_calls=tuple(calls)
            )
            if not completion.empty:
                await self.cache.store(key, self.name, completion, time.monotonic() - started)


def stored_count(path: Path) -> int:
    """Answers stored in the cache at ``path`` (0 if there is none). A plain connection, not a
    read-only one: closing the last connection of a WAL database folds its ``-wal``/``-shm``
    files back, which a read-only one would leave beside it."""
    if not path.exists():
        return 0
    db = sqlite3.connect(path)
    try:
        return int(db.execute("SELECT COUNT(*) FROM responses").fetchone()[0])
    except sqlite3.Error:
        return 0
    finally:
        db.close()
