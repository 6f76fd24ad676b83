"""The generated text of an answer that may call tools → streamed text and whole ``ToolCall``s.

The grammar (``tool_grammar.py``) decides from an answer's first characters whether it is text or
calls: calls start with ``<tool_call>`` or a bare ``{``. The reader releases text as soon as it
cannot be the start of a call, holds what could still be one, and hands each call over once its
closing ``</tool_call>`` (or bare object's closing brace) has arrived: never its raw text.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Literal

from moakit.errors import ModelCallError
from moakit.messages import ToolCall
from moakit.models.local.tool_grammar import CALL_CLOSE, CALL_OPEN

ReaderMode = Literal["text", "auto", "calls"]

# The grammar lets strings hold raw control characters (its ``char`` rule is JSON's, less the
# control-character ban), which strict JSON refuses; the arguments are re-serialised strictly.
_decoder = json.JSONDecoder(strict=False)


class ToolCallReader:
    """``mode``: "text" (no tools: everything is text), "auto" (text or calls, decided by the
    start), "calls" (calls only). ``call_id(n)`` names the n-th call (0-based)."""

    def __init__(self, mode: ReaderMode, call_id: Callable[[int], str]) -> None:
        self._mode: ReaderMode = mode
        self._call_id = call_id
        self._buffer = ""
        self.calls: list[ToolCall] = []

    @property
    def calling(self) -> bool:
        """The answer is (so far) made of tool calls."""
        return self._mode == "calls"

    def feed(self, text: str) -> tuple[str, list[ToolCall]]:
        """Text to stream now, and the calls completed by ``text``."""
        if self._mode == "text":
            return text, []
        self._buffer += text
        if self._mode == "auto":
            decided = _decide(self._buffer)
            if decided is None:
                return "", []
            self._mode = decided
            if decided == "text":
                released, self._buffer = self._buffer, ""
                return released, []
        return "", self._take_calls()

    def finish(self, truncated: bool) -> tuple[str, list[ToolCall]]:
        """At the end of the answer: the text still held, and the last calls. A call cut off by
        ``max_tokens`` (``truncated``) is dropped; any other unreadable rest is an error (the
        grammar makes it impossible)."""
        if self._mode != "calls":
            rest, self._buffer = self._buffer, ""
            return rest, []
        calls = self._take_calls()
        if self._buffer.strip() and not truncated:
            raise ModelCallError(
                f"the embedded model wrote an unreadable tool call: {self._buffer[:200]!r}",
                kind="other",
            )
        self._buffer = ""
        return "", calls

    def _take_calls(self) -> list[ToolCall]:
        done: list[ToolCall] = []
        while True:
            buffer = self._buffer.lstrip()
            if buffer.startswith(CALL_OPEN):
                end = buffer.find(CALL_CLOSE)
                if end == -1:
                    break
                body = buffer[len(CALL_OPEN) : end]
                try:
                    value, _ = _decoder.raw_decode(body.strip())
                except json.JSONDecodeError as exc:
                    raise _unreadable(body, exc) from None
                rest = buffer[end + len(CALL_CLOSE) :]
            elif buffer.startswith("{"):
                try:
                    value, consumed = _decoder.raw_decode(buffer)
                except json.JSONDecodeError:
                    break  # not complete yet (or, at the end, unreadable: see finish)
                rest = buffer[consumed:]
            else:
                if buffer and not CALL_OPEN.startswith(buffer):
                    raise _unreadable(buffer, None)
                break  # nothing, or the start of the next call's tag
            done.append(self._call(value))
            self._buffer = rest
        return done

    def _call(self, value: object) -> ToolCall:
        if not isinstance(value, dict) or not isinstance(value.get("name"), str):
            raise _unreadable(json.dumps(value)[:200], None)
        arguments = value.get("arguments", {})
        if not isinstance(arguments, dict):
            raise _unreadable(json.dumps(value)[:200], None)
        call = ToolCall(
            id=self._call_id(len(self.calls)),
            name=value["name"],
            arguments=json.dumps(arguments, ensure_ascii=False),
        )
        self.calls.append(call)
        return call


def _decide(buffer: str) -> ReaderMode | None:
    """From the start of an "auto" answer: calls, text, or not known yet."""
    if buffer.startswith(("{", CALL_OPEN)):
        return "calls"
    if CALL_OPEN.startswith(buffer):
        return None
    return "text"


def _unreadable(text: str, exc: Exception | None) -> ModelCallError:
    why = f" ({exc})" if exc is not None else ""
    return ModelCallError(
        f"the embedded model wrote an unreadable tool call{why}: {text[:200]!r}", kind="other"
    )
