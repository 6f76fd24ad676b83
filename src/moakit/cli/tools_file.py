"""``--tools FILE.json``: the function tools a CLI query offers the stack's final aggregator.

The file holds an OpenAI-style tools array, ``[{"type": "function", "function": {"name": ...,
"description": ..., "parameters": {JSON schema}}}, ...]``, the same objects a chat-completions
request carries; a bad one is refused naming the file and the field (``tools.0.function.name``).
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from moakit.cli.literal import one_line
from moakit.messages import ToolSpec
from moakit.tool_specs import ToolsInvalid, parse_tools


class ToolsFileError(click.BadParameter):
    """A tools file that cannot be used; the message names the file and the field."""

    def __init__(self, message: str) -> None:
        # The file's own text may be quoted (a field name): shown, never obeyed, on a terminal.
        super().__init__(one_line(message), param_hint="'--tools'")


def load_tools(path: Path) -> tuple[ToolSpec, ...]:
    """The tools in ``path``; ``ToolsFileError`` naming the file and the field otherwise."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ToolsFileError(f"cannot read {path}: {exc}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ToolsFileError(f"{path} is not JSON: {exc}") from None
    try:
        return parse_tools(data)
    except ToolsInvalid as exc:
        raise ToolsFileError(f"{path}: {exc.field}: {exc.message}") from None


__all__ = ["ToolsFileError", "load_tools"]
