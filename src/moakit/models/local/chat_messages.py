"""Typed messages → the dicts a GGUF's chat template reads, tool calls and results included.

A template that takes ``tools`` (Qwen2.5's) gets OpenAI's shape, as Hugging Face's
``apply_chat_template`` passes it: assistant ``tool_calls`` with ``arguments`` as an object (the
template writes them with ``tojson``: a JSON string would come out quoted), ``tool`` messages
with their content. The template itself wraps them in ``<tool_call>`` and ``<tool_response>``.

A template that knows nothing of tools (SmolLM2's, the named ChatML-like formats) would drop
them, or fail on an assistant message without content. For those the same Hermes-style text
Qwen's template writes is put into the messages themselves: the tools block at the end of the
system message, each call as ``<tool_call>`` text in the assistant's content, tool results as a
user turn of ``<tool_response>`` blocks.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from moakit.messages import Message, ToolCall, ToolSpec

DEFAULT_SYSTEM = "You are a helpful assistant."
_TOOLS_INTRO = (
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>"
)
_TOOLS_OUTRO = (
    "\n</tools>\n\nFor each function call, return a json object with function name and "
    "arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n"
    '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>'
)


def template_messages(messages: Sequence[Message], *, native_tools: bool) -> list[dict[str, Any]]:
    """The conversation as template dicts; ``native_tools``: the template renders tool calls
    and tool results itself."""
    if native_tools:
        return [item for m in messages for item in _native(m)]
    out: list[dict[str, Any]] = []
    for message in messages:
        if message.role == "tool":
            block = "".join(
                f"<tool_response>\n{r.content}\n</tool_response>" for r in message.tool_results
            )
            if out and out[-1].get("_tool_results"):
                out[-1]["content"] += "\n" + block
            else:
                out.append({"role": "user", "content": block, "_tool_results": True})
            continue
        content = message.text
        for call in message.tool_calls:
            content += ("\n" if content else "") + f"<tool_call>\n{_call_text(call)}\n</tool_call>"
        out.append({"role": message.role, "content": content})
    for item in out:
        item.pop("_tool_results", None)
    return out


def with_tools_block(
    messages: list[dict[str, Any]], tools: Sequence[ToolSpec]
) -> list[dict[str, Any]]:
    """``messages`` with the tools block appended to the system message (a new one first when
    there is none), for a template that does not render ``tools`` itself."""
    block = _TOOLS_INTRO + "".join("\n" + _json(t.to_openai()) for t in tools) + _TOOLS_OUTRO
    if messages and messages[0]["role"] == "system":
        first = messages[0]
        return [{**first, "content": f"{first['content']}\n\n{block}"}, *messages[1:]]
    return [{"role": "system", "content": f"{DEFAULT_SYSTEM}\n\n{block}"}, *messages]


def _native(message: Message) -> list[dict[str, Any]]:
    if message.role == "tool":  # one template message per result
        return [
            {"role": "tool", "content": r.content, "tool_call_id": r.tool_call_id}
            | ({"name": r.name} if r.name else {})
            for r in message.tool_results
        ] or [{"role": "tool", "content": message.text, "tool_call_id": ""}]
    out: dict[str, Any] = {"role": message.role, "content": message.text}
    calls = message.tool_calls
    if calls:
        out["tool_calls"] = [
            {
                "id": call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": _arguments(call)},
            }
            for call in calls
        ]
    return [out]


def _arguments(call: ToolCall) -> Any:
    """The arguments as an object for ``tojson``; text that is not a JSON object stays text."""
    try:
        return call.parsed_arguments()
    except ValueError:
        return call.arguments


def _call_text(call: ToolCall) -> str:
    return _json({"name": call.name, "arguments": _arguments(call)})


def _json(value: Any) -> str:
    # As the templates' ``tojson`` writes it (Transformers' settings): no ASCII escaping.
    return json.dumps(value, ensure_ascii=False)
