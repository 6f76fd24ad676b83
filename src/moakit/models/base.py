"""The one interface everything that answers a conversation implements.

A remote endpoint, the embedded llama.cpp model, a test double and a whole MoA ``Stack`` are all
``Model``s, so serving, logging and evaluation code only ever needs to know this module.

Adapters implement exactly one method, ``stream``. ``complete`` collects the stream; an adapter may
override it when its backend has a cheaper non-streaming call.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from moakit.errors import ModelCallError
from moakit.messages import (
    ChatRequest,
    Chunk,
    Completion,
    Message,
    ToolCall,
    Usage,
    approx_tokens,
    message_text,
    with_prefill,
)
from moakit.models.profile import ModelProfile


class Model(ABC):
    """Answers a conversation. ``name`` is what traces and results show."""

    name: str
    # What this model can be sent (``models.profile``): the engine and the server ask it
    # before sending a request the backend cannot honour. Adapters set their own at
    # construction; wrappers take the wrapped model's.
    profile: ModelProfile = ModelProfile()

    @abstractmethod
    def stream(self, request: ChatRequest) -> AsyncIterator[Chunk]:
        """Yield the answer as it is produced. Raise ``ModelCallError`` on failure."""

    async def complete(self, request: ChatRequest) -> Completion:
        return await collect(self.stream(request))

    def loaded(self) -> bool:
        """Whether the model can answer without loading weights first. Remote models: always."""
        return True

    async def load(self) -> None:  # noqa: B027 - optional hook, deliberately not abstract
        """Bring weights into memory ahead of the first call. Default: nothing to load."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook, deliberately not abstract
        """Release clients and connections. Default: nothing to release."""


@asynccontextmanager
async def closing_stream(chunks: AsyncIterator[Chunk]) -> AsyncIterator[AsyncIterator[Chunk]]:
    """Close ``chunks`` on the way out, also when the consumer stops early or is cancelled, so a
    half-read stream releases its connection (or semaphore slot) now, not when collected."""
    try:
        yield chunks
    finally:
        aclose = getattr(chunks, "aclose", None)
        if aclose is not None:
            await aclose()


async def collect(chunks: AsyncIterator[Chunk]) -> Completion:
    """The whole answer of a stream. A stream that fails after reporting usage fails with that
    usage on its error (the tokens were spent), as the engine's streamed path records it."""
    parts: list[str] = []
    calls: list[ToolCall] = []
    finish_reason: str | None = None
    usage: Usage | None = None
    try:
        async for chunk in chunks:
            parts.append(chunk.text)
            calls.extend(chunk.tool_calls)
            if chunk.finish_reason is not None:
                finish_reason = chunk.finish_reason
            if chunk.usage is not None:
                usage = chunk.usage
    except ModelCallError as exc:
        if exc.usage is None and usage is not None:
            exc.usage = usage
        raise
    return Completion(
        text="".join(parts),
        finish_reason=finish_reason,
        usage=usage or Usage(),
        tool_calls=tuple(calls),
    )


__all__ = [
    "ChatRequest",
    "Chunk",
    "Completion",
    "Message",
    "Model",
    "ModelProfile",
    "Usage",
    "approx_tokens",
    "closing_stream",
    "collect",
    "message_text",
    "with_prefill",
]
