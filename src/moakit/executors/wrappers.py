"""Member-model wrappers that route a stack's calls through a run's shared ``Services``.

``wrap_for(services)`` is a ``Stack(wrap=...)`` hook: every remote member call waits for its
endpoint's slot (one limiter per endpoint for all workers), and, with a cache, an identical
request is answered once for the whole run. The embedded model is not limited across workers:
each worker process has its own.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from dataclasses import asdict
from typing import Any

from moakit.config import MemberSpec, ResolvedMember, StackConfig
from moakit.executors.base import Gate, Services, SharedCache
from moakit.messages import ToolCall
from moakit.models.base import ChatRequest, Chunk, Completion, Model, Usage
from moakit.models.wrappers import ConcurrencyLimitedModel, WrapperModel


def endpoint_key(spec: MemberSpec) -> str:
    """Calls to one server share a limit (the key variable's name is not part of it)."""
    if spec.provider == "local":
        return "local"
    return f"{spec.provider}:{spec.base_url or 'default'}"


def model_identity(spec: MemberSpec) -> dict[str, Any]:
    """What makes two models answer alike (``moa eval``'s cache uses the same identity)."""
    return {
        "provider": spec.provider,
        "model": spec.model,
        "base_url": spec.base_url,
        "options": {k: spec.options[k] for k in sorted(spec.options)},
    }


def request_key(identity: Mapping[str, Any], request: ChatRequest) -> str:
    payload = {"identity": identity, "request": asdict(request)}
    blob = json.dumps(payload, sort_keys=True, ensure_ascii=False, default=list)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def replay(hit: Completion) -> Iterator[Chunk]:
    """A stored answer as a stream: its text, then its end with any tool calls (same ids)."""
    if hit.text:
        yield Chunk(text=hit.text)
    yield Chunk(finish_reason=hit.finish_reason, usage=hit.usage, tool_calls=hit.tool_calls)


class SharedCachedModel(WrapperModel):
    """Serves a stored answer for an identical request, else calls through and stores the
    answer once it completed (non-empty answers only, text or tool calls: a failure is never
    cached)."""

    complete = Model.complete  # through this wrapper's stream

    def __init__(self, wrapped: Model, cache: SharedCache, identity: Mapping[str, Any]) -> None:
        super().__init__(wrapped)
        self.cache = cache
        self.identity = dict(identity)

    async def stream(self, request: ChatRequest) -> AsyncIterator[Chunk]:
        key = request_key(self.identity, request)
        hit = await self.cache.claim(key)
        if hit is not None:
            for chunk in replay(hit):
                yield chunk
            return
        started = time.monotonic()
        parts: list[str] = []
        calls: list[ToolCall] = []
        finish: str | None = None
        usage = Usage()
        stored = False
        try:
            async for chunk in self.wrapped.stream(request):
                parts.append(chunk.text)
                calls.extend(chunk.tool_calls)
                finish = chunk.finish_reason or finish
                usage = chunk.usage or usage
                yield chunk
            completion = Completion(
                text="".join(parts), finish_reason=finish, usage=usage, tool_calls=tuple(calls)
            )
            if not completion.empty:
                await self.cache.put(key, self.name, completion, time.monotonic() - started)
                stored = True
        finally:
            if not stored:
                await self.cache.release(key)


def stack_limits(configs: Iterable[StackConfig], default: int | None = None) -> dict[str, int]:
    """Calls in flight per remote endpoint: the smallest ``max_concurrency`` its members set
    across ``configs``, else ``default`` (None: unlimited)."""
    limits: dict[str, int] = {}
    for config in configs:
        specs = [m for i in range(len(config.layers)) for m in config.layer_members(i)]
        for spec in [*specs, *config.aggregators()]:
            key = endpoint_key(spec)
            if key == "local":
                continue
            limit = spec.max_concurrency or default
            if limit is not None:
                limits[key] = min(limits.get(key, limit), limit)
    return limits


def wrap_for(services: Services) -> Any:
    """A ``Stack(wrap=...)`` hook applying ``services`` to every member model."""

    def wrap(model: Model, spec: ResolvedMember) -> Model:
        endpoint = endpoint_key(spec)
        if endpoint != "local":
            model = ConcurrencyLimitedModel(model, Gate(services.limits, endpoint))
        if services.cache is not None:
            model = SharedCachedModel(model, services.cache, model_identity(spec))
        return model

    return wrap
