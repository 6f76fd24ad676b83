"""Chat Completions on the wire: the request schema (pydantic; its errors become OpenAI-shaped
400s whose ``param`` is the dotted field path, see ``errors.from_validation``) and the response
bodies.

Every parameter a client may send is declared here: honoured (applied to the final aggregator),
accepted as harmless metadata, or refused with a 400 naming it. Nothing is silently dropped.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

from moakit.messages import ChatRequest, Message
from moakit.result import Result
from moakit.server.request_stack import RequestStack
from moakit.server.text import Text, check_text


class WireModel(BaseModel):
    # strict: "5" is not an integer and "yes" is not a boolean, as on OpenAI's own API.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class WireTextPart(WireModel):
    type: Literal["text"]
    text: Text

    @model_validator(mode="before")
    @classmethod
    def _text_only(cls, data: Any) -> Any:
        return only_text(data, ("text",))


def only_text(part: Any, types: tuple[str, ...]) -> Any:
    """A content part whose ``type`` is not one of the text ``types`` is refused by name."""
    if isinstance(part, dict) and part.get("type") not in types:
        raise PydanticCustomError(
            "unsupported_content",
            "only text content is supported; this part has type {kind}",
            {"kind": repr(part.get("type"))},
        )
    return part


def text_parts(part_type: str) -> BeforeValidator:
    """Content given as a plain string (the common case) becomes one ``part_type`` part."""

    def parts(value: Any) -> Any:
        if isinstance(value, str):
            check_text(value)
            return [{"type": part_type, "text": value}]
        if not isinstance(value, list):
            raise PydanticCustomError(
                "invalid_content", "content must be a string or an array of text parts"
            )
        return value

    return BeforeValidator(parts)


Content = Annotated[list[WireTextPart], text_parts("text")]


_EMPTY_OK = frozenset({"tool_calls", "function_call", "audio", "annotations", "refusal"})


class ChatMessage(WireModel):
    role: Literal["system", "developer", "user", "assistant"]
    content: Content
    name: Text | None = None
    refusal: None = None

    @model_validator(mode="before")
    @classmethod
    def _no_tools(cls, data: Any) -> Any:
        # Checked before the role, so a tool message gets this error rather than a role list.
        if isinstance(data, dict):
            if data.get("role") in ("tool", "function") or data.get("tool_calls"):
                raise PydanticCustomError("tool_calls", "tool calls are not supported")
            if data.get("role") == "assistant" and data.get("content") is None:
                data = {**data, "content": ""}
            # An assistant message echoed back from a previous response carries these empty.
            data = {k: v for k, v in data.items() if not (k in _EMPTY_OK and v in (None, []))}
        return data

    def wire(self) -> Message:
        role = "system" if self.role == "developer" else self.role
        return Message.of(role, "".join(p.text for p in self.content))


class JsonSchemaFormat(WireModel):
    model_config = ConfigDict(populate_by_name=True)

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    description: Text | None = None
    json_schema: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class ResponseFormat(WireModel):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_iff_json_schema(self) -> ResponseFormat:
        if (self.type == "json_schema") != (self.json_schema is not None):
            raise PydanticCustomError(
                "json_schema", "'json_schema' is required with (and only with) type json_schema"
            )
        return self

    def wire(self) -> dict[str, Any] | None:
        """OpenAI's shape, for the aggregator's backend; ``None`` for free text."""
        if self.type == "text":
            return None
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


class StreamOptions(WireModel):
    include_usage: bool | None = None
    include_obfuscation: bool | None = None


def _listify(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


Empty = Annotated[dict[str, Any], Field(max_length=0)]
NoItems = Annotated[list[Any], Field(max_length=0)]


class ChatCompletionRequest(WireModel):
    model: Text = Field(min_length=1)
    messages: list[ChatMessage] = Field(min_length=1)
    # Honoured: applied to the final aggregator (proposers answer with the stack's settings).
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    max_tokens: int | None = Field(default=None, gt=0)
    max_completion_tokens: int | None = Field(default=None, gt=0)
    seed: int | None = None
    stop: Annotated[list[Text] | None, BeforeValidator(_listify)] = Field(
        default=None, max_length=4
    )
    response_format: ResponseFormat | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    # moakit's own: a stack sent with the request, and the per-layer breakdown.
    moa: RequestStack | None = None
    moa_details: bool | None = None
    # Harmless metadata: accepted, not forwarded to any backend.
    user: Text | None = None
    metadata: dict[str, Text] | None = None
    store: bool | None = None
    service_tier: Text | None = None
    parallel_tool_calls: bool | None = None
    prompt_cache_key: Text | None = None
    safety_identifier: Text | None = None
    # Refused unless absent or at their no-op value (errors.UNSUPPORTED words the 400).
    n: Literal[1] | None = None
    logprobs: Literal[False] | None = None
    top_logprobs: None = None
    logit_bias: Empty | None = None
    tools: NoItems | None = None
    tool_choice: Literal["none"] | None = None
    functions: NoItems | None = None
    function_call: None = None

    def chat_request(self) -> ChatRequest:
        return ChatRequest(
            messages=[m.wire() for m in self.messages],
            temperature=self.temperature,
            max_tokens=self.max_completion_tokens or self.max_tokens,
            seed=self.seed,
            stop=list(self.stop) if self.stop else None,
            top_p=self.top_p,
            presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty,
            response_format=self.response_format.wire() if self.response_format else None,
        )


# -- response bodies ----------------------------------------------------------------------------


def finish_reason(result: Result) -> str:
    agg = result.aggregator
    return (agg.finish_reason if agg and agg.finish_reason else None) or "stop"


def usage_body(result: Result) -> dict[str, int]:
    u = result.usage
    return {
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.prompt_tokens + u.completion_tokens,
    }


def completion_body(
    rid: str, created: int, model: str, result: Result, *, details: bool
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": rid,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": result.final, "refusal": None},
                "finish_reason": finish_reason(result),
                "logprobs": None,
            }
        ],
        "usage": usage_body(result),
    }
    if details:
        body["moa"] = result.model_dump(mode="json")
    return body


def chunk_body(
    rid: str, created: int, model: str, delta: dict[str, Any], finish: str | None = None
) -> dict[str, Any]:
    return {
        "id": rid,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
    }


def usage_chunk_body(rid: str, created: int, model: str, result: Result) -> dict[str, Any]:
    return {
        "id": rid,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [],
        "usage": usage_body(result),
    }
