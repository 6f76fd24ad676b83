"""Chat Completions on the wire: the request schema (pydantic; its errors become OpenAI-shaped
400s whose ``param`` is the dotted field path, see ``errors.from_validation``) and the response
bodies.

Every parameter a client may send is declared here: honoured (applied to the final aggregator),
accepted as harmless metadata, or refused with a 400 naming it. Nothing is silently dropped.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

from moakit.messages import (
    ChatRequest,
    Message,
    TextPart,
    ToolCall,
    ToolResult,
    call_to_openai,
)
from moakit.policies import BudgetConfig
from moakit.result import Result
from moakit.server.errors import bad_request
from moakit.server.request_stack import RequestStack
from moakit.server.text import Text, check_text
from moakit.server.wire_base import WireModel
from moakit.server.wire_tools import (
    CallIds,
    ChatTool,
    ChatToolCall,
    ChoiceValue,
    chat_choice_name,
    check_arguments,
    tool_choice,
)


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
# The deprecated ``functions`` API: refused with the name of its replacement. Mapping only the
# request would answer with ``tool_calls`` a legacy client does not read (it waits for
# ``message.function_call``); every current SDK and agent framework sends ``tools``.
LEGACY_ROLE = (
    "role 'function' is the deprecated functions API: send the result as a message with role "
    "'tool' and the call's 'tool_call_id'"
)
LEGACY_CALL = "'function_call' is the deprecated functions API: use 'tool_calls'"


class ChatMessage(WireModel):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    # ``None`` only where OpenAI allows it: an assistant message that makes tool calls.
    content: Content | None = None
    name: Text | None = None
    refusal: None = None
    tool_calls: list[ChatToolCall] | None = None
    tool_call_id: Text | None = None

    @model_validator(mode="before")
    @classmethod
    def _legacy_and_echoes(cls, data: Any) -> Any:
        # Checked before the role, so a legacy message gets this error rather than a role list.
        if isinstance(data, dict):
            if data.get("role") == "function":
                raise PydanticCustomError("legacy_functions", LEGACY_ROLE)
            if data.get("function_call") is not None:
                raise PydanticCustomError("legacy_functions", LEGACY_CALL)
            # An assistant message echoed back from a previous response carries these empty.
            data = {k: v for k, v in data.items() if not (k in _EMPTY_OK and v in (None, []))}
        return data


def typed_messages(messages: list[ChatMessage]) -> list[Message]:
    """The conversation as typed messages; a 400 naming the field for what only the whole
    conversation shows (a tool result answering no earlier call, a part in the wrong role)."""
    out: list[Message] = []
    calls = CallIds()
    for i, message in enumerate(messages):
        where = f"messages.{i}"
        role = "system" if message.role == "developer" else message.role
        text = "".join(p.text for p in message.content or ())
        if message.tool_calls and role != "assistant":
            raise bad_request("only assistant messages carry 'tool_calls'", f"{where}.tool_calls")
        if message.tool_call_id is not None and role != "tool":
            raise bad_request("only tool messages carry 'tool_call_id'", f"{where}.tool_call_id")
        if message.content is None and role != "assistant":
            raise _missing(f"{where}.content")
        if role == "tool":
            if message.tool_call_id is None:
                raise _missing(f"{where}.tool_call_id")
            call_id = message.tool_call_id
            name = calls.name_of(call_id, f"{where}.tool_call_id")
            out.append(Message("tool", (ToolResult(call_id, text, name),)))
        elif role == "assistant":
            made = []
            for j, wire_call in enumerate(message.tool_calls or ()):
                param = f"{where}.tool_calls.{j}.function.arguments"
                check_arguments(wire_call.function.arguments, param)
                made.append(wire_call.call())
                calls.add(made[-1])
            out.append(Message.assistant(text, made))
        else:
            out.append(Message(role, (TextPart(text),)))
    return out


def _missing(param: str) -> Exception:
    return bad_request(f"missing required parameter: {param}", param, "missing_required_parameter")


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


class MoaBudget(WireModel):
    """``moa_budget``: this query's spending limits (each the smaller of this and the
    stack's own); the engine cuts members and layers to stay within them."""

    max_calls: int | None = Field(default=None, ge=1, le=10_000)
    max_tokens: int | None = Field(default=None, ge=1)
    max_cost_usd: float | None = Field(default=None, gt=0)
    max_latency_s: float | None = Field(default=None, gt=0)

    def config(self) -> BudgetConfig:
        return BudgetConfig(**self.model_dump())


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
    # moakit's own: a stack sent with the request, the per-layer breakdown, and a budget for
    # this query (it can only tighten the stack's own, ``engine.budget``).
    moa: RequestStack | None = None
    moa_details: bool | None = None
    moa_budget: MoaBudget | None = None
    # Harmless metadata: accepted, not forwarded to any backend.
    user: Text | None = None
    metadata: dict[str, Text] | None = None
    store: bool | None = None
    service_tier: Text | None = None
    prompt_cache_key: Text | None = None
    safety_identifier: Text | None = None
    # Refused unless absent or at their no-op value (errors.UNSUPPORTED words the 400).
    n: Literal[1] | None = None
    logprobs: Literal[False] | None = None
    top_logprobs: None = None
    logit_bias: Empty | None = None
    # Function tools: offered to the final aggregator, whose calls come back checked.
    tools: list[ChatTool] | None = None
    tool_choice: ChoiceValue | None = None
    parallel_tool_calls: bool | None = None
    # The deprecated functions API (LEGACY_*): refused, naming its replacement.
    functions: NoItems | None = None
    function_call: None = None

    def chat_request(self) -> ChatRequest:
        """The typed request; a 400 (``ApiError``) naming the field for what the schema alone
        cannot see."""
        tools = tuple(t.spec() for t in self.tools or ())
        return ChatRequest(
            messages=typed_messages(self.messages),
            tools=tools,
            tool_choice=tool_choice(
                self.tool_choice, tools, chat_choice_name, "tool_choice.function.name"
            ),
            parallel_tool_calls=self.parallel_tool_calls,
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
    if result.tool_calls:
        return "tool_calls"
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
                "message": message_body(result),
                "finish_reason": finish_reason(result),
                "logprobs": None,
            }
        ],
        "usage": usage_body(result),
    }
    if details:
        body["moa"] = result.model_dump(mode="json")
    return body


def message_body(result: Result) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": result.final, "refusal": None}
    if result.tool_calls:
        message["tool_calls"] = [call_to_openai(c) for c in result.tool_calls]
        if not result.final:
            message["content"] = None  # OpenAI's shape for an answer made only of calls
    return message


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


def tool_call_deltas(calls: Sequence[ToolCall], first_index: int = 0) -> list[dict[str, Any]]:
    """OpenAI's streamed shape for each call, in order: a delta that opens it (index, id,
    name, empty arguments), then one with its arguments. The calls arrive whole and checked
    (the stream rule), so the arguments need not be cut into the upstream's fragments."""
    deltas: list[dict[str, Any]] = []
    for index, call in enumerate(calls, start=first_index):
        opening = {
            "index": index,
            "id": call.id,
            "type": "function",
            "function": {"name": call.name, "arguments": ""},
        }
        deltas.append({"tool_calls": [opening]})
        deltas.append({"tool_calls": [{"index": index, "function": {"arguments": call.arguments}}]})
    return deltas


def usage_chunk_body(rid: str, created: int, model: str, result: Result) -> dict[str, Any]:
    return {
        "id": rid,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [],
        "usage": usage_body(result),
    }
