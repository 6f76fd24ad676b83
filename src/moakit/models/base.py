"""The one interface everything that answers a conversation implements.

A remote endpoint, the embedded llama.cpp model, a test double and a whole MoA ``Stack`` are all
``Model``s, so serving, logging and evaluation code only ever needs to know this module.

Adapters implement exactly one method, ``stream``. ``complete`` collects the stream; an adapter may
override it when its backend has a cheaper non-streaming call.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

# OpenAI-style chat message: {"role": "system" | "user" | "assistant", "content": str}.
Message = dict[str, Any]


class Usage(BaseModel):
    """Token counts of one call or, summed, of a whole run."""

    model_config = ConfigDict(frozen=True)

    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            prompt_tokens=self.prompt_tokens + other.prompt_tokens,
            completion_tokens=self.completion_tokens + other.completion_tokens,
        )


@dataclass(frozen=True)
class ChatRequest:
    """What one call sends. ``None`` means "the backend's default"."""

    messages: Sequence[Message]
    temperature: float | None = None
    max_tokens: int | None = None
    seed: int | None = None
    stop: Sequence[str] | None = None
    top_p: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    # OpenAI's shape: {"type": "json_object"} or {"type": "json_schema", "json_schema": {"name":
    # ..., "schema": {...}, "strict": ...}}. ``None`` means free text. Only a model whose
    # ``supports_response_format`` is true may be sent one.
    response_format: Mapping[str, Any] | None = None
    # The assistant's answer so far: the model continues it (a trailing assistant message the
    # backend completes rather than answers) and streams only the NEW text. Only a model whose
    # ``supports_prefill`` is true may be sent one; ``messages`` stay the conversation, without
    # that partial answer. Used by the staircase strategy to write an answer in chunks.
    prefill: str | None = None


@dataclass(frozen=True)
class Chunk:
    """A piece of a streamed answer. The last chunk of a stream carries ``finish_reason`` and,
    where the backend reports it, ``usage``."""

    text: str = ""
    finish_reason: str | None = None
    usage: Usage | None = None


@dataclass(frozen=True)
class Completion:
    text: str
    finish_reason: str | None = None
    usage: Usage = field(default_factory=Usage)

    @property
    def truncated(self) -> bool:
        return self.finish_reason == "length"


class Model(ABC):
    """Answers a conversation. ``name`` is what traces and results show."""

    name: str
    # Capabilities the engine and the server check before sending a request a backend cannot
    # honour (a clear error up front instead of a silently ignored parameter).
    supports_response_format: ClassVar[bool] = False
    supports_prefill: ClassVar[bool] = False  # continue a partial assistant message
    supports_penalties: ClassVar[bool] = True  # presence_penalty / frequency_penalty

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
    parts: list[str] = []
    finish_reason: str | None = None
    usage = Usage()
    async for chunk in chunks:
        parts.append(chunk.text)
        if chunk.finish_reason is not None:
            finish_reason = chunk.finish_reason
        if chunk.usage is not None:
            usage = chunk.usage
    return Completion(text="".join(parts), finish_reason=finish_reason, usage=usage)


def approx_tokens(text: str) -> int:
    """Word count as a token estimate, for backends that report no usage."""
    return len(text.split())


def with_prefill(messages: Sequence[Message], prefill: str | None) -> list[Message]:
    """``messages`` with the partial answer ``prefill`` as a trailing assistant message (the
    wire shape of assistant prefill for Anthropic and vLLM's ``continue_final_message``)."""
    out = list(messages)
    if prefill:
        out.append({"role": "assistant", "content": prefill})
    return out


def message_text(message: Message) -> str:
    content: Any = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return ""


__all__ = [
    "ChatRequest",
    "Chunk",
    "Completion",
    "Message",
    "Model",
    "Usage",
    "approx_tokens",
    "closing_stream",
    "collect",
    "message_text",
    "with_prefill",
]
