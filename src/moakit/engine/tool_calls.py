"""An aggregator's tool calls, checked before any of them may leave.

A call the caller cannot execute is worse than no answer: an agent would run a tool with
arguments its schema forbids, or a tool it never offered. So a call to an unknown tool,
arguments that are not a JSON object valid for the tool's schema, a second call where
``parallel_tool_calls`` is false, or no call where ``tool_choice`` demands one, make the
attempt fail (``malformed``: retried, or the next fallback answers, while nothing has been
sent) instead of reaching the client.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from moakit.errors import ConfigError, ModelCallError
from moakit.messages import ChatRequest, ForceTool, ToolCall, ToolSpec
from moakit.schema import OutputInvalid, SchemaRefused, check_schema, check_value
from moakit.tool_specs import NAME


async def check_tool_calls(calls: Sequence[ToolCall], request: ChatRequest) -> tuple[ToolCall, ...]:
    """``calls`` if they are what ``request`` allows (missing ids filled in); otherwise a
    ``ModelCallError`` that says what is wrong."""
    choice = request.tool_choice
    if not calls:
        if request.tools and (choice == "required" or isinstance(choice, ForceTool)):
            raise _invalid("tool_choice asked for a tool call and the answer made none")
        return ()
    if not request.offers_tools:
        raise _invalid(f"the answer calls {calls[0].name!r} but no tool was offered")
    if request.parallel_tool_calls is False and len(calls) > 1:
        raise _invalid(f"{len(calls)} tool calls in one answer; parallel_tool_calls is false")
    tools = {tool.name: tool for tool in request.tools}
    out = []
    for position, call in enumerate(calls):
        tool = tools.get(call.name)
        if tool is None:
            raise _invalid(f"the answer calls {call.name[:64]!r}, which is not an offered tool")
        if isinstance(choice, ForceTool) and call.name != choice.name:
            raise _invalid(f"tool_choice names {choice.name!r}; the answer calls {call.name!r}")
        try:
            arguments = call.parsed_arguments()
        except ValueError:
            raise _invalid(f"the arguments of {call.name!r} are not a JSON object") from None
        try:
            await check_value(arguments, tool.parameters)
        except (OutputInvalid, SchemaRefused) as exc:
            reason = f"the arguments of {call.name!r} do not match its schema: {exc}"
            raise _invalid(reason) from None
        if not call.id:
            call = ToolCall(_call_id(call, position), call.name, call.arguments)
        out.append(call)
    return tuple(out)


async def check_tool_specs(tools: Sequence[ToolSpec]) -> None:
    """A ``ConfigError`` naming the field (``tools.N.function...``) for a tool the engine could
    not check calls against: a bad or repeated name, or a schema ``schema.check_schema``
    refuses (unsafe patterns, ``$ref`` cycles, not a schema)."""
    seen: set[str] = set()
    for i, tool in enumerate(tools):
        where = f"tools.{i}.function"
        if not NAME.match(tool.name):
            raise ConfigError(
                "a tool name is 1-64 letters, digits, '_' or '-'", field=f"{where}.name"
            )
        if tool.name in seen:
            raise ConfigError(f"tool {tool.name!r} is offered twice", field=f"{where}.name")
        seen.add(tool.name)
        try:
            await check_schema(dict(tool.parameters))
        except SchemaRefused as exc:
            raise ConfigError(str(exc), field=f"{where}.parameters") from None


def _call_id(call: ToolCall, position: int) -> str:
    # A backend that gives no ids (some OpenAI-compatible servers): a stable one, so the same
    # answer always carries the same ids.
    digest = hashlib.sha256(f"{position}:{call.name}:{call.arguments}".encode()).hexdigest()
    return f"call_{digest[:24]}"


def _invalid(reason: str) -> ModelCallError:
    return ModelCallError(f"invalid tool call: {reason}", kind="malformed")


__all__ = ["check_tool_calls", "check_tool_specs"]
