"""The vocabulary every part of moakit speaks: a conversation's typed messages, what one call
sends (``ChatRequest``, with the caller's tools), what comes back (``Chunk`` as it streams,
``Completion`` whole) and what it cost (``Usage``). Wire-neutral and dependency-free, so the
engine, results, events, prompts and every adapter share it without importing one another.

A message is a role and a tuple of parts: text, an image URL, a tool call (assistant) or a
tool result (tool). Adapters translate to and from their wire (OpenAI's dicts, Anthropic's
blocks, a chat template); nothing inside moakit indexes a dict to find a message's text.

Tool calls travel whole inside moakit (``Chunk.tool_calls`` carries finished calls, never
argument fragments): a call's arguments must be checked against its tool's schema before any
of it reaches a client (the stream rule), so the wires split them into deltas on the way out.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal, TypeAlias

from pydantic import BaseModel, ConfigDict

Role: TypeAlias = Literal["system", "user", "assistant", "tool"]


@dataclass(frozen=True, slots=True)
class TextPart:
    text: str


@dataclass(frozen=True, slots=True)
class ImagePart:
    url: str
    detail: str | None = None


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A function call an assistant made. ``arguments`` is the JSON object text as the model
    wrote it (what every wire carries); ``parsed_arguments`` reads it."""

    id: str
    name: str
    arguments: str = "{}"

    def parsed_arguments(self) -> dict[str, Any]:
        """The arguments as a dict; ``ValueError`` when they are not a JSON object."""
        value = json.loads(self.arguments or "{}")
        if not isinstance(value, dict):
            raise ValueError("tool call arguments must be a JSON object")
        return value


@dataclass(frozen=True, slots=True)
class ToolResult:
    """What a tool returned, sent back by the caller. ``name`` is the function's name where
    the wire says it (Qwen's template and Anthropic do not need it; some traces like it)."""

    tool_call_id: str
    content: str
    name: str | None = None
    is_error: bool = False


Part: TypeAlias = TextPart | ImagePart | ToolCall | ToolResult


@dataclass(frozen=True, slots=True)
class Message:
    role: Role
    parts: tuple[Part, ...] = ()
    name: str | None = None

    # -- constructors -----------------------------------------------------------------------

    @classmethod
    def of(cls, role: Role, text: str) -> Message:
        """A text message of ``role``."""
        return cls(role, (TextPart(text),))

    @classmethod
    def system(cls, text: str) -> Message:
        return cls("system", (TextPart(text),))

    @classmethod
    def user(cls, text: str) -> Message:
        return cls("user", (TextPart(text),))

    @classmethod
    def assistant(cls, text: str = "", tool_calls: Iterable[ToolCall] = ()) -> Message:
        parts: tuple[Part, ...] = (TextPart(text),) if text else ()
        return cls("assistant", parts + tuple(tool_calls))

    @classmethod
    def tool(cls, tool_call_id: str, content: str, *, name: str | None = None) -> Message:
        return cls("tool", (ToolResult(tool_call_id, content, name),))

    # -- reading ----------------------------------------------------------------------------

    @property
    def text(self) -> str:
        """The text parts joined (tool calls, results and images are not text)."""
        parts = self.parts
        if len(parts) == 1 and type(parts[0]) is TextPart:
            return parts[0].text
        return "".join(p.text for p in parts if isinstance(p, TextPart))

    @property
    def tool_calls(self) -> tuple[ToolCall, ...]:
        return tuple(p for p in self.parts if isinstance(p, ToolCall))

    @property
    def tool_results(self) -> tuple[ToolResult, ...]:
        return tuple(p for p in self.parts if isinstance(p, ToolResult))

    @property
    def images(self) -> tuple[ImagePart, ...]:
        return tuple(p for p in self.parts if isinstance(p, ImagePart))

    def with_text(self, text: str) -> Message:
        """This message with its text parts replaced by one ``text`` part, first; the other
        parts (images, tool calls) are kept after it."""
        others = tuple(p for p in self.parts if not isinstance(p, TextPart))
        return replace(self, parts=(TextPart(text), *others) if text else others)

    # -- OpenAI's chat-completions dict, the lingua franca of callers and traces -------------

    def to_openai(self) -> dict[str, Any]:
        parts = self.parts
        if len(parts) == 1 and type(parts[0]) is TextPart and self.role != "tool":
            # One text part, the shape of nearly every message (every call sends several).
            plain: dict[str, Any] = {"role": self.role, "content": parts[0].text}
            if self.name:
                plain["name"] = self.name
            return plain
        out: dict[str, Any] = {"role": self.role}
        if self.role == "tool":
            result = self.tool_results[0] if self.tool_results else ToolResult("", self.text)
            out["tool_call_id"] = result.tool_call_id
            out["content"] = result.content
            return out
        images = self.images
        if images:
            content: list[dict[str, Any]] = []
            for part in self.parts:
                if isinstance(part, TextPart):
                    content.append({"type": "text", "text": part.text})
                elif isinstance(part, ImagePart):
                    url: dict[str, Any] = {"url": part.url}
                    if part.detail:
                        url["detail"] = part.detail
                    content.append({"type": "image_url", "image_url": url})
            out["content"] = content
        else:
            out["content"] = self.text
        calls = self.tool_calls
        if calls:
            out["tool_calls"] = [call_to_openai(c) for c in calls]
            if not out["content"]:
                out["content"] = None
        if self.name:
            out["name"] = self.name
        return out

    @classmethod
    def from_openai(cls, data: Mapping[str, Any]) -> Message:
        """A message from OpenAI's dict shape (what library callers pass). ``developer`` is a
        system message; ``function`` results are tool results. Raises ``ValueError`` naming
        what is wrong; the server validates its wire before this, with field paths."""
        role = data.get("role")
        if role == "developer":
            role = "system"
        content = data.get("content")
        if role in ("tool", "function"):
            call_id = data.get("tool_call_id") or data.get("name") or ""
            return cls("tool", (ToolResult(str(call_id), _content_text(content)),))
        if role not in ("system", "user", "assistant"):
            raise ValueError(f"unknown message role {role!r}")
        parts: list[Part] = list(_content_parts(content))
        for raw in data.get("tool_calls") or ():
            parts.append(call_from_openai(raw))
        name = data.get("name")
        return cls(role, tuple(parts), name if isinstance(name, str) else None)


def _content_parts(content: Any) -> Iterable[Part]:
    if content is None:
        return
    if isinstance(content, str):
        yield TextPart(content)
        return
    if not isinstance(content, list):
        raise ValueError("message content must be a string or a list of parts")
    for part in content:
        kind = part.get("type") if isinstance(part, Mapping) else None
        if kind in ("text", "input_text", "output_text"):
            yield TextPart(str(part.get("text", "")))
        elif kind == "image_url":
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, Mapping) else image
            detail = image.get("detail") if isinstance(image, Mapping) else None
            yield ImagePart(str(url), detail)
        else:
            raise ValueError(f"unsupported content part type {kind!r}")


def _content_text(content: Any) -> str:
    return "".join(p.text for p in _content_parts(content) if isinstance(p, TextPart))


def call_to_openai(call: ToolCall) -> dict[str, Any]:
    return {
        "id": call.id,
        "type": "function",
        "function": {"name": call.name, "arguments": call.arguments},
    }


def call_from_openai(raw: Any) -> ToolCall:
    function = raw.get("function") if isinstance(raw, Mapping) else None
    if not isinstance(function, Mapping) or not isinstance(function.get("name"), str):
        raise ValueError("a tool call needs function.name")
    arguments = function.get("arguments")
    if not isinstance(arguments, str):
        arguments = json.dumps(arguments if arguments is not None else {})
    return ToolCall(str(raw.get("id") or ""), function["name"], arguments)


# What a library caller may pass as a conversation: a prompt string, ``Message``s, or
# OpenAI-style dicts (typed by ``as_messages``).
MessagesLike: TypeAlias = str | Iterable[Message | Mapping[str, Any]]


def as_messages(messages: MessagesLike) -> tuple[Message, ...]:
    """Typed messages from what a library caller may pass: a prompt string, ``Message``s, or
    OpenAI-style dicts."""
    if isinstance(messages, str):
        return (Message.user(messages),)
    return tuple(m if isinstance(m, Message) else Message.from_openai(m) for m in messages)


def to_openai(messages: Iterable[Message]) -> list[dict[str, Any]]:
    return [m.to_openai() for m in messages]


# -- tools a caller offers ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ToolSpec:
    """A function tool: its name, what it does, and its arguments' JSON schema."""

    name: str
    description: str | None = None
    parameters: Mapping[str, Any] = field(
        default_factory=lambda: {"type": "object", "properties": {}}
    )
    strict: bool | None = None

    @classmethod
    def from_openai(cls, data: Mapping[str, Any]) -> ToolSpec:
        """From OpenAI's ``{"type": "function", "function": {...}}`` (or the inner object)."""
        function = data.get("function", data)
        if not isinstance(function, Mapping) or not isinstance(function.get("name"), str):
            raise ValueError("a tool needs function.name")
        parameters = function.get("parameters")
        return cls(
            name=function["name"],
            description=function.get("description"),
            parameters=parameters if isinstance(parameters, Mapping) else {"type": "object"},
            strict=function.get("strict"),
        )

    def to_openai(self) -> dict[str, Any]:
        function: dict[str, Any] = {"name": self.name, "parameters": dict(self.parameters)}
        if self.description:
            function["description"] = self.description
        if self.strict is not None:
            function["strict"] = self.strict
        return {"type": "function", "function": function}


@dataclass(frozen=True, slots=True)
class ForceTool:
    """``tool_choice`` naming one function: the model must call it."""

    name: str


ToolChoice: TypeAlias = Literal["auto", "none", "required"] | ForceTool


def tool_choice_to_openai(choice: ToolChoice) -> Any:
    if isinstance(choice, ForceTool):
        return {"type": "function", "function": {"name": choice.name}}
    return choice


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
    """What one call sends. ``None`` means "the backend's default". ``messages`` may be given
    as OpenAI-style dicts for convenience; they are typed on construction."""

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
    # Function tools the model may call (only a model whose ``profile.tools`` is true), how it
    # must choose (``None``: the backend's default, "auto"), and whether it may make several
    # calls in one answer (``None``: the backend's default, yes).
    tools: tuple[ToolSpec, ...] = ()
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None

    def __post_init__(self) -> None:
        # Typed once here, so every adapter and the engine can rely on ``Message``s (a caller's
        # OpenAI-style dicts are a convenience of the public API).
        messages: Any = self.messages
        if type(messages) is not tuple:
            messages = tuple(messages) if isinstance(messages, list) else as_messages(messages)
        if not all(type(m) is Message for m in messages):
            messages = as_messages(messages)
        object.__setattr__(self, "messages", messages)
        tools: Any = self.tools
        if not isinstance(tools, tuple):
            object.__setattr__(self, "tools", tuple(tools))

    @property
    def offers_tools(self) -> bool:
        """Tools are offered and the model may call them."""
        return bool(self.tools) and self.tool_choice != "none"


@dataclass(frozen=True)
class Chunk:
    """A piece of a streamed answer: text, and/or tool calls each complete (adapters assemble a
    wire's argument fragments). The last chunk of a stream carries ``finish_reason`` and, where
    the backend reports it, ``usage``."""

    text: str = ""
    finish_reason: str | None = None
    usage: Usage | None = None
    tool_calls: tuple[ToolCall, ...] = ()


@dataclass(frozen=True)
class Completion:
    text: str
    finish_reason: str | None = None
    usage: Usage = field(default_factory=Usage)
    tool_calls: tuple[ToolCall, ...] = ()

    @property
    def truncated(self) -> bool:
        return self.finish_reason == "length"

    @property
    def empty(self) -> bool:
        """No text worth the name and no tool call: an answer made only of tool calls is an
        answer."""
        return not self.tool_calls and not self.text.strip()


def approx_tokens(text: str) -> int:
    """Word count as a token estimate, for backends that report no usage."""
    return len(text.split())


def with_prefill(messages: Sequence[Message], prefill: str | None) -> list[Message]:
    """``messages`` with the partial answer ``prefill`` as a trailing assistant message (the
    wire shape of assistant prefill for Anthropic and vLLM's ``continue_final_message``)."""
    out = list(messages)
    if prefill:
        out.append(Message.assistant(prefill))
    return out


def message_text(message: Message) -> str:
    return message.text


__all__ = [
    "ChatRequest",
    "Chunk",
    "Completion",
    "ForceTool",
    "ImagePart",
    "Message",
    "MessagesLike",
    "Part",
    "Role",
    "TextPart",
    "ToolCall",
    "ToolChoice",
    "ToolResult",
    "ToolSpec",
    "Usage",
    "approx_tokens",
    "as_messages",
    "call_from_openai",
    "call_to_openai",
    "message_text",
    "to_openai",
    "tool_choice_to_openai",
    "with_prefill",
]
