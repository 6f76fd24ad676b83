"""The Responses API on the wire, text subset: the request schema and the response object.

Shapes follow the ``openai`` package's ``openai/types/responses`` models, so
``client.responses.create`` and ``client.responses.stream`` parse them unchanged. Stateful and
tool features (``previous_response_id``, ``tools``, ``background``...) get a 400 naming them.
"""

from __future__ import annotations

import time
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, model_validator
from pydantic_core import PydanticCustomError

from moakit.messages import ChatRequest, Message
from moakit.result import Result
from moakit.server.text import Text, check_text
from moakit.server.wire import Empty, NoItems, WireModel, only_text, text_parts


class InputText(WireModel):
    type: Literal["input_text", "output_text"]
    text: Text
    annotations: NoItems | None = None

    @model_validator(mode="before")
    @classmethod
    def _text_only(cls, data: Any) -> Any:
        return only_text(data, ("input_text", "output_text"))


class InputMessage(WireModel):
    type: Literal["message"] | None = None
    role: Literal["system", "developer", "user", "assistant"]
    content: Annotated[list[InputText], text_parts("input_text")]
    id: Text | None = None
    status: Text | None = None

    @model_validator(mode="before")
    @classmethod
    def _messages_only(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("type") not in (None, "message"):
            kind = data.get("type")
            if isinstance(kind, str) and "call" in kind:
                raise PydanticCustomError("tool_calls", "tool calls are not supported")
            raise PydanticCustomError(
                "unsupported_content",
                "only message input items are supported; this item has type {kind}",
                {"kind": repr(kind)},
            )
        return data

    def wire(self) -> Message:
        role = "system" if self.role == "developer" else self.role
        return Message.of(role, "".join(p.text for p in self.content))


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
    input: Annotated[list[InputMessage], BeforeValidator(_as_messages)] = Field(min_length=1)
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
    parallel_tool_calls: bool | None = None
    truncation: Literal["disabled"] | None = None
    prompt_cache_key: Text | None = None
    safety_identifier: Text | None = None
    stream_options: dict[str, bool] | None = None
    # Refused unless absent or at their no-op value.
    tools: NoItems | None = None
    tool_choice: Literal["none", "auto"] | None = None
    background: Literal[False] | None = None
    previous_response_id: None = None
    conversation: None = None
    reasoning: Empty | None = None
    include: NoItems | None = None
    prompt: None = None
    max_tool_calls: None = None
    top_logprobs: None = None

    def chat_request(self) -> ChatRequest:
        messages = [m.wire() for m in self.input]
        if self.instructions:
            messages.insert(0, Message.system(self.instructions))
        fmt = self.text.format if self.text and self.text.format else None
        return ChatRequest(
            messages=messages,
            temperature=self.temperature,
            top_p=self.top_p,
            max_tokens=self.max_output_tokens,
            response_format=fmt.chat_format() if fmt else None,
        )


UNSUPPORTED = {
    "tools": "'tools' is not supported by MoA stacks",
    "tool_choice": "'tool_choice' is not supported by MoA stacks",
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
        "parallel_tool_calls": False,
        "previous_response_id": None,
        "reasoning": None,
        "store": False,
        "temperature": body.temperature,
        "text": {
            "format": fmt.model_dump(by_alias=True, exclude_none=True) if fmt else {"type": "text"}
        },
        "tool_choice": "none",
        "tools": [],
        "top_p": body.top_p,
        "truncation": "disabled",
        "usage": usage(result) if result is not None else None,
        "user": body.user,
        "metadata": dict(body.metadata or {}),
        "background": False,
    }
