"""The Responses API on the wire, text and function tools: the request schema and the
response object.

Shapes follow the ``openai`` package's ``openai/types/responses`` models, so
``client.responses.create`` and ``client.responses.stream`` parse them unchanged. Stateful and
hosted-tool features (``previous_response_id``, ``web_search``, ``background``...) get a 400
naming them.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import replace
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BeforeValidator, Field, model_validator
from pydantic_core import PydanticCustomError

from moakit.messages import ChatRequest, Message, Role, ToolCall, ToolResult
from moakit.result import Result
from moakit.server.errors import bad_request
from moakit.server.text import Text, check_text
from moakit.server.wire import Empty, NoItems, only_text, text_parts
from moakit.server.wire_base import WireModel
from moakit.server.wire_tools import (
    CallId,
    CallIds,
    CallName,
    ChoiceValue,
    ResponsesTool,
    check_arguments,
    responses_choice_name,
    tool_choice,
)

T = TypeVar("T")


class InputText(WireModel):
    type: Literal["input_text", "output_text"]
    text: Text
    annotations: NoItems | None = None
    # An output message echoed back (an agent's loop) carries its logprobs: read, not used.
    logprobs: list[Any] | None = None

    @model_validator(mode="before")
    @classmethod
    def _text_only(cls, data: Any) -> Any:
        return only_text(data, ("input_text", "output_text"))


TextParts = Annotated[list[InputText], text_parts("input_text")]

# The input items this server reads, and the fields each may carry (OpenAI's ``id`` and
# ``status`` are echoes of a previous response's output: accepted and not needed).
ITEM_FIELDS = {
    "message": {"type", "role", "content", "id", "status"},
    "function_call": {"type", "call_id", "name", "arguments", "id", "status"},
    "function_call_output": {"type", "call_id", "output", "id", "status"},
}


class InputItem(WireModel):
    """A message, a function call the model made (echoed back), or its output."""

    type: Literal["message", "function_call", "function_call_output"] | None = None
    role: Literal["system", "developer", "user", "assistant"] | None = None
    content: TextParts | None = None
    id: Text | None = None
    status: Text | None = None
    call_id: CallId | None = None
    name: CallName | None = None
    arguments: Text | None = None
    output: TextParts | None = None

    @model_validator(mode="before")
    @classmethod
    def _known_items(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        kind = data.get("type") or "message"
        fields = ITEM_FIELDS.get(kind) if isinstance(kind, str) else None
        if fields is None:
            raise PydanticCustomError(
                "unsupported_content",
                "only message, function_call and function_call_output input items are "
                "supported; this item has type {kind}",
                {"kind": repr(kind)},
            )
        extra = sorted(str(k) for k in data if k not in fields)
        if extra:
            raise PydanticCustomError(
                "unknown_field",
                "unrecognized field {field} in a {kind} item",
                {"field": repr(extra[0]), "kind": kind},
            )
        return data


ROLES: dict[str, Role] = {
    "system": "system",
    "developer": "system",
    "user": "user",
    "assistant": "assistant",
}


def typed_input(items: list[InputItem]) -> list[Message]:
    """The conversation as typed messages: consecutive function calls join the assistant
    message before them (one assistant turn), each output is a tool message. A 400 names the
    field for a missing one, or an output answering no earlier call."""
    out: list[Message] = []
    calls = CallIds()
    for i, item in enumerate(items):
        where = f"input.{i}"
        if item.type == "function_call":
            call_id = _required(item.call_id, f"{where}.call_id")
            name = _required(item.name, f"{where}.name")
            arguments = _required(item.arguments, f"{where}.arguments")
            check_arguments(arguments, f"{where}.arguments")
            call = ToolCall(call_id, name, arguments)
            calls.add(call)
            if out and out[-1].role == "assistant":
                out[-1] = replace(out[-1], parts=(*out[-1].parts, call))
            else:
                out.append(Message.assistant("", [call]))
        elif item.type == "function_call_output":
            call_id = _required(item.call_id, f"{where}.call_id")
            output = _required(item.output, f"{where}.output")
            name = calls.name_of(call_id, f"{where}.call_id")
            text = "".join(p.text for p in output)
            out.append(Message("tool", (ToolResult(call_id, text, name),)))
        else:
            role = _required(item.role, f"{where}.role")
            content = _required(item.content, f"{where}.content")
            text = "".join(p.text for p in content)
            out.append(Message.of(ROLES[role], text))
    return out


def _required(value: T | None, param: str) -> T:
    if value is None:
        raise bad_request(
            f"missing required parameter: {param}", param, "missing_required_parameter"
        )
    return value


def _as_messages(value: Any) -> Any:
    if isinstance(value, str):
        check_text(value)
        return [{"role": "user", "content": value}]
    return value


class TextFormat(WireModel):
    type: Literal["text", "json_object", "json_schema"]
    name: str | None = Field(default=None, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    json_schema: dict[str, Any] | None = Field(default=None, alias="schema")
    description: Text | None = None
    strict: bool | None = None

    @model_validator(mode="after")
    def _named_schema(self) -> TextFormat:
        if self.type == "json_schema" and (self.name is None or self.json_schema is None):
            raise PydanticCustomError("json_schema", "type json_schema needs 'name' and 'schema'")
        return self

    def chat_format(self) -> dict[str, Any] | None:
        if self.type == "text":
            return None
        if self.type == "json_object":
            return {"type": "json_object"}
        spec: dict[str, Any] = {"name": self.name, "schema": self.json_schema}
        if self.strict is not None:
            spec["strict"] = self.strict
        return {"type": "json_schema", "json_schema": spec}


class TextConfig(WireModel):
    format: TextFormat | None = None
    verbosity: Literal["medium"] | None = None


class ResponsesRequest(WireModel):
    model: Text = Field(min_length=1)
    input: Annotated[list[InputItem], BeforeValidator(_as_messages)] = Field(min_length=1)
    instructions: Text | None = None
    stream: bool | None = None
    max_output_tokens: int | None = Field(default=None, gt=0)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    text: TextConfig | None = None
    # Harmless: accepted, echoed or ignored. Nothing is stored, whatever ``store`` says.
    metadata: dict[str, Text] | None = None
    user: Text | None = None
    store: bool | None = None
    service_tier: Text | None = None
    truncation: Literal["disabled"] | None = None
    prompt_cache_key: Text | None = None
    safety_identifier: Text | None = None
    stream_options: dict[str, bool] | None = None
    # Function tools: offered to the final aggregator, whose calls come back checked.
    tools: list[ResponsesTool] | None = None
    tool_choice: ChoiceValue | None = None
    parallel_tool_calls: bool | None = None
    # Refused unless absent or at their no-op value.
    background: Literal[False] | None = None
    previous_response_id: None = None
    conversation: None = None
    reasoning: Empty | None = None
    include: NoItems | None = None
    prompt: None = None
    max_tool_calls: None = None
    top_logprobs: None = None

    def chat_request(self) -> ChatRequest:
        """The typed request; a 400 (``ApiError``) naming the field for what the schema alone
        cannot see."""
        messages = typed_input(self.input)
        if self.instructions:
            messages.insert(0, Message.system(self.instructions))
        fmt = self.text.format if self.text and self.text.format else None
        tools = tuple(t.spec() for t in self.tools or ())
        choice = tool_choice(self.tool_choice, tools, responses_choice_name, "tool_choice.name")
        return ChatRequest(
            messages=messages,
            tools=tools,
            tool_choice=choice,
            parallel_tool_calls=self.parallel_tool_calls,
            temperature=self.temperature,
            top_p=self.top_p,
            max_tokens=self.max_output_tokens,
            response_format=fmt.chat_format() if fmt else None,
        )


UNSUPPORTED = {
    "background": "background responses are not supported: nothing is stored",
    "previous_response_id": "previous_response_id is not supported: responses are not stored; "
    "send the whole conversation as `input`",
    "conversation": "'conversation' is not supported: responses are not stored",
    "reasoning": "'reasoning' options are not supported by MoA stacks",
    "include": "'include' is not supported by MoA stacks",
    "prompt": "prompt templates are not supported",
    "max_tool_calls": "'max_tool_calls' is not supported by MoA stacks",
    "top_logprobs": "'top_logprobs' is not supported by MoA stacks",
    "truncation": "only truncation='disabled' is supported",
}


# -- the response object ----------------------------------------------------------------------


def output_message(item_id: str, text: str, status: str) -> dict[str, Any]:
    return {
        "id": item_id,
        "type": "message",
        "role": "assistant",
        "status": status,
        "content": [output_text(text)] if status in ("completed", "incomplete") else [],
    }


def function_call_item(item_id: str, call: ToolCall, status: str = "completed") -> dict[str, Any]:
    return {
        "id": item_id,
        "type": "function_call",
        "call_id": call.id,
        "name": call.name,
        "arguments": call.arguments if status == "completed" else "",
        "status": status,
    }


def call_item_id() -> str:
    return f"fc_{uuid.uuid4().hex}"


def output_items(message_id: str, result: Result) -> list[dict[str, Any]]:
    """The message (when there is text, or nothing else), then one item per tool call."""
    items = []
    if result.final or not result.tool_calls:
        items.append(output_message(message_id, result.final, final_status(result)))
    items += [function_call_item(call_item_id(), call) for call in result.tool_calls]
    return items


def final_status(result: Result) -> str:
    """``incomplete`` when the answer stopped at its token limit, else ``completed``."""
    return "incomplete" if result.truncated else "completed"


def output_text(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def usage(result: Result) -> dict[str, Any]:
    u = result.usage
    return {
        "input_tokens": u.prompt_tokens,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": u.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": u.total_tokens,
    }


def response_object(
    rid: str,
    body: ResponsesRequest,
    *,
    status: str,
    output: list[dict[str, Any]],
    result: Result | None = None,
    error: dict[str, Any] | None = None,
    created_at: float | None = None,
) -> dict[str, Any]:
    fmt = body.text.format if body.text and body.text.format else None
    return {
        "id": rid,
        "object": "response",
        "created_at": int(created_at or time.time()),
        "status": status,
        "error": error,
        # The answer stopped at the token limit: OpenAI's way of saying so.
        "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
        "instructions": body.instructions,
        "max_output_tokens": body.max_output_tokens,
        "model": body.model,
        "output": output,
        "parallel_tool_calls": body.parallel_tool_calls is not False,
        "previous_response_id": None,
        "reasoning": None,
        "store": False,
        "temperature": body.temperature,
        "text": {
            "format": fmt.model_dump(by_alias=True, exclude_none=True) if fmt else {"type": "text"}
        },
        "tool_choice": body.tool_choice if body.tool_choice is not None else "auto",
        "tools": [t.model_dump(mode="json") for t in body.tools or ()],
        "top_p": body.top_p,
        "truncation": "disabled",
        "usage": usage(result) if result is not None else None,
        "user": body.user,
        "metadata": dict(body.metadata or {}),
        "background": False,
    }
