"""Scripted tool calls of the fake backend: which calls a model answers with, and how they look
on OpenAI's wire (a whole message, or ``delta.tool_calls`` chunks by index).

A model's ``Behavior.tool_calls`` is consulted only when a request offers tools (``tools``
non-empty and ``tool_choice`` not ``"none"``), the way a real model never calls a tool it was
not offered; so one behaviour serves both a stack's aggregator (sent the tools) and anything
else. The fake does not check calls against the tools' schemas: testing that is the caller's
job, and a script may call a tool that was never offered on purpose.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from moakit.testing._fake_wire import ChunkWriter, dumps

# Characters of a call's arguments per streamed delta: arguments always arrive in pieces, the
# way OpenAI streams them token by token, so a client's assembler is really exercised.
ARGUMENT_PIECE_CHARS = 8


@dataclass(frozen=True)
class ScriptedCall:
    """One function call. ``arguments`` is a JSON object (dumped compactly, as OpenAI writes
    it) or the raw text to send, valid JSON or not. ``id`` defaults to one derived from the
    conversation, so the same request always gets the same ids and different ones differ."""

    name: str
    arguments: Mapping[str, Any] | str = field(default_factory=dict)
    id: str | None = None

    def arguments_json(self) -> str:
        if isinstance(self.arguments, str):
            return self.arguments
        return json.dumps(dict(self.arguments), separators=(",", ":"), ensure_ascii=False)


@dataclass(frozen=True)
class ScriptedAnswer:
    """What a scripted model answers: ``calls`` (with ``text`` said before them, if any), or,
    without calls, ``text`` (``None``: the backend's usual deterministic answer)."""

    calls: tuple[ScriptedCall, ...] = ()
    text: str | None = None


# The request body -> the answer; ``None`` means the usual deterministic text answer.
ToolCaller = Callable[[Mapping[str, Any]], ScriptedAnswer | None]


def tool_rounds_done(messages: Sequence[Mapping[str, Any]]) -> int:
    """How many assistant messages with tool calls follow the last user message: 0 when the
    user has just spoken, 1 after the first round of tool results, and so on."""
    count = 0
    for message in reversed(messages):
        if message.get("role") == "user":
            break
        if message.get("role") == "assistant" and message.get("tool_calls"):
            count += 1
    return count


@dataclass(frozen=True)
class ToolScript:
    """A tool loop, round by round: the request after ``k`` rounds of tool results (see
    ``tool_rounds_done``) is answered with ``rounds[k]``'s calls, preceded by ``text``; once the
    rounds are used up, with the text ``final`` (``None``: the usual deterministic answer), so
    an agent's loop ends."""

    rounds: Sequence[Sequence[ScriptedCall]]
    final: str | None = None
    text: str = ""

    def __call__(self, body: Mapping[str, Any]) -> ScriptedAnswer:
        done = tool_rounds_done(body.get("messages") or [])
        if done < len(self.rounds) and self.rounds[done]:
            return ScriptedAnswer(tuple(self.rounds[done]), self.text or None)
        return ScriptedAnswer(text=self.final)


def offers_tools(body: Mapping[str, Any]) -> bool:
    return bool(body.get("tools")) and body.get("tool_choice") != "none"


def rounds_from_config(raw: Any) -> list[list[ScriptedCall]]:
    """``tool_rounds`` of a TOML config: a list of rounds, each a list of tables with ``name``
    and ``arguments`` (a table, or JSON text)."""
    if not isinstance(raw, list):
        raise ValueError("tool_rounds must be a list of rounds (lists of {name, arguments})")
    rounds: list[list[ScriptedCall]] = []
    for i, round_ in enumerate(raw):
        if not isinstance(round_, list):
            raise ValueError(f"tool_rounds[{i}] must be a list of calls")
        calls = []
        for j, call in enumerate(round_):
            if not isinstance(call, dict) or not isinstance(call.get("name"), str):
                raise ValueError(f"tool_rounds[{i}][{j}] needs a string 'name'")
            arguments = call.get("arguments", {})
            if not isinstance(arguments, dict | str):
                raise ValueError(f"tool_rounds[{i}][{j}].arguments must be a table or a string")
            calls.append(ScriptedCall(call["name"], arguments))
        rounds.append(calls)
    return rounds


# -- the arguments a fault sends ------------------------------------------------------------

_WRONG_BY_TYPE: dict[str, Any] = {
    "string": 12345,
    "integer": "not a number",
    "number": "not a number",
    "boolean": "not a boolean",
    "array": "not an array",
    "object": "not an object",
    "null": "not null",
}


def spoil_arguments(arguments: str, tool: Mapping[str, Any] | None) -> str:
    """Arguments the tool's schema refuses (the ``bad_tool_arguments`` fault): still a JSON
    object, with the first typed property (or enum) given a value of the wrong type; a JSON
    array when the schema declares no typed property, which no function tool accepts."""
    function = tool.get("function") if isinstance(tool, Mapping) else None
    schema = function.get("parameters") if isinstance(function, Mapping) else None
    props = schema.get("properties") if isinstance(schema, Mapping) else None
    try:
        value = json.loads(arguments)
    except ValueError:
        value = None
    if isinstance(props, Mapping) and isinstance(value, dict):
        for name, sub in props.items():
            if not isinstance(sub, Mapping):
                continue
            if isinstance(sub.get("enum"), list):
                value[name] = {"not": "in the enum"}
                return dumps(value).decode()
            kind = sub.get("type")
            kind = kind[0] if isinstance(kind, list) and kind else kind
            if isinstance(kind, str) and kind in _WRONG_BY_TYPE:
                value[name] = _WRONG_BY_TYPE[kind]
                return dumps(value).decode()
    return "[]"


# -- the wire -------------------------------------------------------------------------------


@dataclass(frozen=True)
class WireCall:
    """A call as it goes on the wire: id, name and the exact arguments text."""

    id: str
    name: str
    arguments: str

    def to_openai(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments},
        }


def wire_calls(
    answer: ScriptedAnswer, body: Mapping[str, Any], digest: str, *, spoil: bool
) -> list[WireCall]:
    """The answer's calls with their ids filled in and, under the ``bad_tool_arguments``
    fault (``spoil``), their arguments made schema-invalid."""
    tools = {
        t["function"]["name"]: t
        for t in body.get("tools") or ()
        if isinstance(t, Mapping) and isinstance(t.get("function"), Mapping)
    }
    out = []
    for i, call in enumerate(answer.calls):
        arguments = call.arguments_json()
        if spoil:
            arguments = spoil_arguments(arguments, tools.get(call.name))
        call_id = call.id or f"call_{_short_hash(f'{digest}:{i}:{call.name}')}"
        out.append(WireCall(call_id, call.name, arguments))
    return out


def _short_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def argument_pieces(arguments: str) -> list[str]:
    step = ARGUMENT_PIECE_CHARS
    return [arguments[i : i + step] for i in range(0, len(arguments), step)]


def calls_tokens(calls: Sequence[WireCall]) -> int:
    """Completion tokens an answer's calls count for: one per argument piece and per call."""
    return sum(1 + len(argument_pieces(c.arguments)) for c in calls)


def message_with_calls(text: str | None, calls: Sequence[WireCall]) -> dict[str, Any]:
    """The non-streamed assistant message: ``content`` null unless text came first."""
    return {
        "role": "assistant",
        "content": text or None,
        "refusal": None,
        "tool_calls": [c.to_openai() for c in calls],
    }


def call_deltas(cw: ChunkWriter, words: Sequence[str], calls: Sequence[WireCall]) -> list[bytes]:
    """The SSE events of a streamed answer with calls, finish and usage left out: the text's
    words first (if any), then each call by index, its id, type and name first with empty
    arguments, then its arguments in pieces; the very first event carries the role."""
    events: list[bytes] = []
    if words:
        events.append(cw.first(words[0]))
        events.extend(cw.token(" " + w) for w in words[1:])
    for index, call in enumerate(calls):
        start = {
            "index": index,
            "id": call.id,
            "type": "function",
            "function": {"name": call.name, "arguments": ""},
        }
        if events:
            events.append(cw.delta({"tool_calls": [start]}))
        else:
            first = {"role": "assistant", "content": None, "tool_calls": [start], "refusal": None}
            events.append(cw.delta(first))
        events.extend(
            cw.delta({"tool_calls": [{"index": index, "function": {"arguments": piece}}]})
            for piece in argument_pieces(call.arguments)
        )
    return events


def truncate_calls(calls: list[WireCall]) -> list[WireCall]:
    """The ``truncated`` fault on an answer with calls: the last call's arguments cut in half,
    as a model stopped by its token limit mid-call leaves them."""
    if not calls:
        return calls
    last = calls[-1]
    return [*calls[:-1], WireCall(last.id, last.name, last.arguments[: len(last.arguments) // 2])]


def check_tool_messages(body: Mapping[str, Any]) -> str | None:
    """OpenAI's 400s about tools: tools must be function objects with a name, and a ``tool``
    message must answer a call of an earlier assistant message. A stricter double catches a
    caller (moakit) that sends what a real endpoint refuses."""
    tools = body.get("tools")
    if tools is not None:
        if not isinstance(tools, list):
            return "'tools' must be a list"
        for i, tool in enumerate(tools):
            function = tool.get("function") if isinstance(tool, dict) else None
            if not isinstance(function, dict) or not isinstance(function.get("name"), str):
                return f"tools[{i}].function.name is required"
    called: set[str] = set()
    for i, message in enumerate(body.get("messages") or ()):
        for call in message.get("tool_calls") or ():
            if isinstance(call, dict) and isinstance(call.get("id"), str):
                called.add(call["id"])
        if message.get("role") == "tool" and message.get("tool_call_id") not in called:
            return (
                f"messages[{i}]: messages with role 'tool' must be a response to a preceding "
                "message with 'tool_calls'"
            )
    return None
