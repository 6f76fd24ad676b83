"""The vocabulary every part of moakit speaks: a conversation's messages, what one call sends
(``ChatRequest``), what comes back (``Chunk`` as it streams, ``Completion`` whole) and what it
cost (``Usage``). Wire-neutral and dependency-free, so the engine, results, events, prompts and
every adapter share it without importing one another.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

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
    # ``profile.response_format`` is true may be sent one.
    response_format: Mapping[str, Any] | None = None
    # The assistant's answer so far: the model continues it (a trailing assistant message the
    # backend completes rather than answers) and streams only the NEW text. Only a model whose
    # ``profile.prefill`` is true may be sent one; ``messages`` stay the conversation, without
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
    "Usage",
    "approx_tokens",
    "message_text",
    "with_prefill",
]
