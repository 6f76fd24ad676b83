"""Typed messages and tools to and from Anthropic's Messages API shapes.

The Messages API takes the system prompt as a separate parameter and only user/assistant turns:
leading system messages are lifted out and joined; an assistant's tool calls become
``tool_use`` blocks; tool results become ``tool_result`` blocks in a user turn (consecutive
results share one turn, as the API wants them answered together).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

from moakit.messages import (
    ForceTool,
    ImagePart,
    Message,
    TextPart,
    ToolCall,
    ToolChoice,
    ToolResult,
    ToolSpec,
)

FINISH = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
}


def split_system(messages: Sequence[Message]) -> tuple[str | None, list[dict[str, Any]]]:
    system = [m.text for m in messages if m.role == "system"]
    turns: list[dict[str, Any]] = []
    for message in messages:
        if message.role == "system":
            continue
        role = "assistant" if message.role == "assistant" else "user"
        blocks = list(_blocks(message))
        if message.role == "tool" and turns and turns[-1]["role"] == "user":
            last = turns[-1]["content"]
            if isinstance(last, list) and last and last[-1].get("type") == "tool_result":
                last.extend(blocks)
                continue
        if all(b["type"] == "text" for b in blocks):
            turns.append({"role": role, "content": "".join(b["text"] for b in blocks)})
        else:
            turns.append({"role": role, "content": blocks})
    return ("\n\n".join(system) if system else None), turns


def _blocks(message: Message) -> Iterable[dict[str, Any]]:
    for part in message.parts:
        if isinstance(part, TextPart):
            if part.text:
                yield {"type": "text", "text": part.text}
        elif isinstance(part, ImagePart):
            yield {"type": "image", "source": {"type": "url", "url": part.url}}
        elif isinstance(part, ToolCall):
            yield {
                "type": "tool_use",
                "id": part.id,
                "name": part.name,
                "input": _arguments(part),
            }
        elif isinstance(part, ToolResult):
            result: dict[str, Any] = {
                "type": "tool_result",
                "tool_use_id": part.tool_call_id,
                "content": part.content,
            }
            if part.is_error:
                result["is_error"] = True
            yield result


def _arguments(call: ToolCall) -> dict[str, Any]:
    # A call echoed back by a client is the client's business; arguments that do not parse
    # are sent as an empty object rather than failing the whole conversation.
    try:
        return call.parsed_arguments()
    except ValueError:
        return {}


def tools_param(tools: Sequence[ToolSpec]) -> list[dict[str, Any]]:
    out = []
    for tool in tools:
        spec: dict[str, Any] = {"name": tool.name, "input_schema": dict(tool.parameters)}
        if tool.description:
            spec["description"] = tool.description
        out.append(spec)
    return out


def tool_choice_param(choice: ToolChoice | None, parallel: bool | None) -> dict[str, Any] | None:
    if choice is None and parallel is None:
        return None
    param: dict[str, Any]
    if isinstance(choice, ForceTool):
        param = {"type": "tool", "name": choice.name}
    elif choice == "required":
        param = {"type": "any"}
    elif choice == "none":
        return {"type": "none"}
    else:
        param = {"type": "auto"}
    if parallel is False:
        param["disable_parallel_tool_use"] = True
    return param


def tool_calls_of(content: Iterable[Any]) -> tuple[ToolCall, ...]:
    """The ``tool_use`` blocks of a final message, as moakit tool calls."""
    return tuple(
        ToolCall(block.id, block.name, json.dumps(block.input, ensure_ascii=False))
        for block in content
        if getattr(block, "type", None) == "tool_use"
    )


__all__ = ["FINISH", "split_system", "tool_calls_of", "tool_choice_param", "tools_param"]
