"""Composition by wrapping (pydantic-ai's ``WrapperModel``): a response cache, a recorder, a
concurrency limiter or a fault injector is a ``Model`` around a ``Model``, never an engine edit.

``Stack(config, wrap=...)`` passes every member model through one such factory.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from contextlib import AbstractAsyncContextManager
from typing import Any

from moakit.messages import ToolCall
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


class ScrubbingModel(WrapperModel):
    """Replaces every value in ``secrets`` with ``***`` in what the wrapped model says: its
    answer (streamed or not) and its error messages. A model that echoes a configured key (a
    prompt injection can make one) then never puts it in a result, a reference, a cache, a
    response or a stream: the engine applies this innermost, so everything downstream sees only
    scrubbed text.

    Streaming: a key may arrive split across chunks, so the end of the text that could still be
    the start of a key is held back until the next chunk decides (usually nothing: a tail is held
    only when it matches a key's first characters)."""

    def __init__(self, wrapped: Model, secrets: Iterable[str]) -> None:
        super().__init__(wrapped)
        # Longest first, so a key that contains another is replaced whole.
        self.secrets = tuple(sorted({s for s in secrets if s}, key=len, reverse=True))
        self._firsts = frozenset(s[0] for s in self.secrets)
        self._longest = max((len(s) for s in self.secrets), default=0)

    def clean(self, text: str) -> str:
        for secret in self.secrets:
            if secret in text:
                text = text.replace(secret, "***")
        return text

    def _clean_calls(self, calls: tuple[ToolCall, ...]) -> tuple[ToolCall, ...]:
        """Tool calls are answers too: a key echoed into a call's arguments is scrubbed."""
        return tuple(
            ToolCall(call.id, self.clean(call.name), self.clean(call.arguments)) for call in calls
        )

    def _held_from(self, text: str) -> int:
        """Where the longest tail of ``text`` that begins some key (but is not all of it) starts;
        ``len(text)`` when none does."""
        for i in range(max(0, len(text) - self._longest + 1), len(text)):
            if text[i] in self._firsts:
                tail = text[i:]
                if any(s.startswith(tail) for s in self.secrets):
                    return i
        return len(text)

    def _clean_error(self, exc: Exception) -> None:
        exc.args = tuple(self.clean(a) if isinstance(a, str) else a for a in exc.args)

    async def stream(self, request: ChatRequest) -> AsyncIterator[Chunk]:
        held = ""
        try:
            async with closing_stream(self.wrapped.stream(request)) as chunks:
                async for chunk in chunks:
                    text = self.clean(held + chunk.text)
                    last = chunk.finish_reason is not None
                    cut = len(text) if last else self._held_from(text)
                    text, held = text[:cut], text[cut:]
                    calls = self._clean_calls(chunk.tool_calls)
                    if text == chunk.text and calls == chunk.tool_calls:
                        yield chunk  # nothing held or replaced: the chunk as it came
                    elif text or last or chunk.usage is not None or calls:
                        yield Chunk(
                            text=text,
                            finish_reason=chunk.finish_reason,
                            usage=chunk.usage,
                            tool_calls=calls,
                        )
        except Exception as exc:
            self._clean_error(exc)
            raise
        if held:  # a stream that ended without a finishing chunk
            yield Chunk(text=held)

    async def complete(self, request: ChatRequest) -> Completion:
        try:
            done = await self.wrapped.complete(request)
        except Exception as exc:
            self._clean_error(exc)
            raise
        return Completion(
            text=self.clean(done.text),
            finish_reason=done.finish_reason,
            usage=done.usage,
            tool_calls=self._clean_calls(done.tool_calls),
        )
