"""Function tools from untrusted JSON (an OpenAI-style ``tools`` array: a ``--tools`` file, a
UI request body), checked with errors naming the field (``tools.0.function.name``).

Only the shape is checked here; the engine checks, before any call is sent, that names are
unique and that it can apply each ``parameters`` schema (``engine.tool_calls``).
"""

from __future__ import annotations

import re
from typing import Any

from moakit.messages import ToolSpec

# OpenAI's rule for function names (Anthropic's is the same set, 64 characters).
NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
MAX_TOOLS = 128  # OpenAI's limit per request
_FUNCTION_FIELDS = ("name", "description", "parameters", "strict")


class ToolsInvalid(ValueError):
    """A tools array that cannot be used; ``field`` says where (``tools.1.function.name``)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def _tool(i: int, raw: Any) -> ToolSpec:
    field = f"tools.{i}"
    if not isinstance(raw, dict):
        raise ToolsInvalid(field, "each tool must be an object")
    kind = raw.get("type", "function")
    if kind != "function":
        raise ToolsInvalid(f"{field}.type", f"only function tools are supported (got {kind!r})")
    function = raw.get("function")
    if not isinstance(function, dict):
        raise ToolsInvalid(f"{field}.function", "must be an object with the function's name")
    for key in function:
        if key not in _FUNCTION_FIELDS:
            raise ToolsInvalid(f"{field}.function.{key}"[:200], "unknown field")
    name = function.get("name")
    if not isinstance(name, str) or not NAME.match(name):
        raise ToolsInvalid(f"{field}.function.name", "must be 1-64 letters, digits, '_' or '-'")
    description = function.get("description")
    if description is not None and not isinstance(description, str):
        raise ToolsInvalid(f"{field}.function.description", "must be a string")
    parameters = function.get("parameters", {"type": "object", "properties": {}})
    if not isinstance(parameters, dict):
        raise ToolsInvalid(f"{field}.function.parameters", "must be a JSON schema object")
    strict = function.get("strict")
    if strict is not None and not isinstance(strict, bool):
        raise ToolsInvalid(f"{field}.function.strict", "must be true or false")
    return ToolSpec(name=name, description=description, parameters=parameters, strict=strict)


def parse_tools(data: Any) -> tuple[ToolSpec, ...]:
    """The tools of an OpenAI-style array; ``ToolsInvalid`` naming the field otherwise."""
    if not isinstance(data, list) or not data:
        raise ToolsInvalid("tools", "must be a non-empty array of tools")
    if len(data) > MAX_TOOLS:
        raise ToolsInvalid("tools", f"at most {MAX_TOOLS} tools")
    tools = tuple(_tool(i, raw) for i, raw in enumerate(data))
    seen: set[str] = set()
    for i, tool in enumerate(tools):
        if tool.name in seen:
            raise ToolsInvalid(f"tools.{i}.function.name", f"{tool.name!r} is defined twice")
        seen.add(tool.name)
    return tools


__all__ = ["MAX_TOOLS", "ToolsInvalid", "parse_tools"]
