"""Function tools on both OpenAI wires: the tool definitions a client offers, how it says
which one the model must use (``tool_choice``), and the calls it echoes back in the
conversation, read into moakit's typed ``ToolSpec`` / ``ToolChoice`` / ``ToolCall``.

Shapes the schema can say (a name's pattern, a string where a string belongs) are checked by
pydantic, so the 400's ``param`` is the field's dotted path. What needs the whole request (a
``tool_choice`` naming a tool that is not offered, a tool result answering no call) is
checked here, with the same kind of 400. A tool's JSON schema is checked by the engine's
``check_tool_specs`` (``runner.check_tools``), before any call.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, JsonValue, model_validator
from pydantic_core import PydanticCustomError

from moakit.messages import ForceTool, ToolCall, ToolChoice, ToolSpec
from moakit.server.errors import ApiError, bad_request
from moakit.server.text import Text, check_text
from moakit.server.wire_base import WireModel

# OpenAI's rule for a function's name (the engine checks the same before any call).
ToolName = Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
# A call the client echoes back names a function it was given; any non-empty name is kept as
# data (the aggregator sees it), the offered tools are what the engine checks calls against.
CallName = Annotated[str, Field(min_length=1, max_length=256), AfterValidator(check_text)]
# A call's id, as the client echoes it (constraints before the Unicode check, so a 400 for an
# empty one says "string", not "item").
CallId = Annotated[str, Field(min_length=1), AfterValidator(check_text)]


def only_functions(data: Any) -> Any:
    """A hosted or custom tool (``web_search``, ``custom``...) is refused by name."""
    if isinstance(data, dict) and data.get("type") != "function":
        raise PydanticCustomError(
            "unsupported_tool",
            "only function tools are supported; this tool has type {kind}",
            {"kind": repr(data.get("type"))},
        )
    return data


class FunctionDef(WireModel):
    name: ToolName
    description: Text | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ChatTool(WireModel):
    """Chat Completions: ``{"type": "function", "function": {name, description, ...}}``."""

    type: Literal["function"]
    function: FunctionDef

    @model_validator(mode="before")
    @classmethod
    def _functions_only(cls, data: Any) -> Any:
        return only_functions(data)

    def spec(self) -> ToolSpec:
        return tool_spec(self.function)


class ResponsesTool(FunctionDef):
    """Responses: the same fields, flat: ``{"type": "function", name, parameters, ...}``."""

    type: Literal["function"]

    @model_validator(mode="before")
    @classmethod
    def _functions_only(cls, data: Any) -> Any:
        return only_functions(data)

    def spec(self) -> ToolSpec:
        return tool_spec(self)


def tool_spec(function: FunctionDef) -> ToolSpec:
    parameters = function.parameters
    return ToolSpec(
        name=function.name,
        description=function.description,
        # OpenAI's default for a function without parameters: it takes none.
        parameters=parameters if parameters is not None else {"type": "object", "properties": {}},
        strict=function.strict,
    )


class CallFunction(WireModel):
    name: CallName
    arguments: Text


class ChatToolCall(WireModel):
    """A call in an assistant message the client sends back."""

    id: CallId
    type: Literal["function"]
    function: CallFunction

    def call(self) -> ToolCall:
        return ToolCall(self.id, self.function.name, self.function.arguments)


def check_arguments(arguments: str, param: str) -> None:
    """An echoed call's arguments must be a JSON object (or empty: no arguments): adapters
    re-encode them for their backend (Anthropic's ``tool_use.input`` is an object)."""
    if not arguments.strip():
        return
    try:
        value = json.loads(arguments)
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise bad_request("a tool call's arguments must be a JSON object, as text", param)


# -- tool_choice ----------------------------------------------------------------------------

ChoiceValue = JsonValue


def tool_choice(
    value: ChoiceValue | None,
    tools: Sequence[ToolSpec],
    named: Callable[[Any], str | None],
    name_param: str,
) -> ToolChoice | None:
    """``tool_choice`` as moakit's ``ToolChoice``; ``named`` reads a forced function's name
    from the wire's object shape (Chat nests it in ``function``, Responses does not)."""
    if value is None:
        return None
    if value in ("auto", "none", "required"):
        choice: ToolChoice = value  # type: ignore[assignment]
        if value == "required" and not tools:
            raise _choice_error("tool_choice 'required' needs 'tools'", "tool_choice")
        return choice
    name = named(value) if isinstance(value, dict) else None
    if name is None:
        raise _choice_error(
            "tool_choice must be 'auto', 'none', 'required' or a named function tool "
            '({"type": "function", ...})',
            "tool_choice",
        )
    if name not in {t.name for t in tools}:
        raise _choice_error(f"tool_choice names {name[:64]!r}, which is not in 'tools'", name_param)
    return ForceTool(name)


def chat_choice_name(value: Any) -> str | None:
    function = value.get("function")
    if value.get("type") != "function" or set(value) != {"type", "function"}:
        return None
    if not isinstance(function, dict) or set(function) != {"name"}:
        return None
    name = function.get("name")
    return name if isinstance(name, str) else None


def responses_choice_name(value: Any) -> str | None:
    if value.get("type") != "function" or set(value) != {"type", "name"}:
        return None
    name = value.get("name")
    return name if isinstance(name, str) else None


def _choice_error(message: str, param: str) -> ApiError:
    return bad_request(message, param)


class CallIds:
    """The tool calls made so far in a conversation, so a tool result answering none is a
    400 rather than a backend's error (or a model told about a call it never made)."""

    def __init__(self) -> None:
        self._names: dict[str, str] = {}

    def add(self, call: ToolCall) -> None:
        self._names[call.id] = call.name

    def name_of(self, call_id: str, param: str) -> str:
        name = self._names.get(call_id)
        if name is None:
            raise bad_request(
                f"{call_id[:64]!r} answers no tool call of an earlier assistant message", param
            )
        return name


__all__ = [
    "CallId",
    "CallIds",
    "CallName",
    "ChatTool",
    "ChatToolCall",
    "ResponsesTool",
    "chat_choice_name",
    "check_arguments",
    "responses_choice_name",
    "tool_choice",
]
