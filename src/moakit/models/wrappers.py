"""Composition by wrapping (pydantic-ai's ``WrapperModel``): a response cache, a recorder, a
concurrency limiter or a fault injector is a ``Model`` around a ``Model``, never an engine edit.

``Stack(config, wrap=...)`` passes every member model through one such factory.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from typing import Any

from moakit.models.base import ChatRequest, Chunk, Completion, Model, closing_stream, collect


class WrapperModel(Model):
    """Delegates everything to ``wrapped``; subclasses override what they change."""

    def __init__(self, wrapped: Model) -> None:
        self.wrapped = wrapped
        self.name = wrapped.name
        # A wrapper changes how a call is made, never what the model can be sent.
        self.profile = wrapped.profile

    def stream(self, request: ChatRequest) -> AsyncIterator[Chunk]:
        return self.wrapped.stream(request)

    async def complete(self, request: ChatRequest) -> Completion:
        # A wrapper that changes the stream (an injector, a recorder) changes the whole answer
        # too; one that leaves the stream alone keeps the wrapped model's own plain request.
        if type(self).stream is not WrapperModel.stream:
            return await collect(self.stream(request))
        return await self.wrapped.complete(request)

    def loaded(self) -> bool:
        return self.wrapped.loaded()

    async def load(self) -> None:
        await self.wrapped.load()

    async def aclose(self) -> None:
        await self.wrapped.aclose()


# What ``asyncio.Semaphore`` offers; any async context manager that admits a call will do.
Limiter = AbstractAsyncContextManager[Any]


class ConcurrencyLimitedModel(WrapperModel):
    """At most as many calls at once as ``limiter`` admits. Share one limiter between the
    models of one endpoint to cap the endpoint. Waiting for a slot counts against the caller's
    timeout (the engine's per-call timeout wraps the whole call)."""

    def __init__(self, wrapped: Model, limiter: Limiter) -> None:
        super().__init__(wrapped)
        self.limiter = limiter

    async def stream(self, request: ChatRequest) -> AsyncIterator[Chunk]:
        async with self.limiter, closing_stream(self.wrapped.stream(request)) as chunks:
            async for chunk in chunks:
                yield chunk

    async def complete(self, request: ChatRequest) -> Completion:
        async with self.limiter:
            return await self.wrapped.complete(request)
