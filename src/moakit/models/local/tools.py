"""What a request's tools mean for the embedded model: what the prompt offers, which grammar
holds the answer, how the answer is read, and what its calls are named.

``tool_choice``:

* "auto" (the default): the tools are offered; the answer is free text or calls (text may not
  start like a call: see ``tool_grammar.py``);
* "required": calls only, to any of the tools;
* ``ForceTool(name)``: exactly one call, to that tool (every tool is still shown to the model);
* "none": the tools are not rendered at all and nothing is constrained, as if none were sent
  (a small model shown tools it may not call tends to write calls as text anyway).

``parallel_tool_calls`` false allows one call only. A request with tools and a
``response_format`` or a ``prefill`` is refused: the grammar holds the whole answer from its
first token, which neither of those leaves free.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from moakit.errors import ConfigError
from moakit.messages import ChatRequest, ForceTool, ToolSpec
from moakit.models.local.tool_calls import ReaderMode
from moakit.models.local.tool_grammar import tool_call_grammar


@dataclass(frozen=True)
class ToolPlan:
    rendered: tuple[ToolSpec, ...] = ()  # tools the prompt offers
    grammar: str | None = None
    mode: ReaderMode = "text"


def plan_tools(request: ChatRequest) -> ToolPlan:
    if not request.offers_tools:
        return ToolPlan()
    if request.response_format is not None:
        raise ConfigError(
            "the embedded model cannot take tools and a response_format together",
            field="response_format",
        )
    if request.prefill:
        raise ConfigError(
            "the embedded model cannot continue a partial answer (prefill) with tools",
            field="prefill",
        )
    tools = request.tools
    choice = request.tool_choice or "auto"
    parallel = request.parallel_tool_calls is not False
    if isinstance(choice, ForceTool):
        forced = [t for t in tools if t.name == choice.name]
        if not forced:
            raise ConfigError(
                f"tool_choice names {choice.name!r}, which is not among the tools",
                field="tool_choice",
            )
        return ToolPlan(tools, _grammar(forced, parallel=False, allow_text=False), "calls")
    if choice == "required":
        return ToolPlan(tools, _grammar(tools, parallel=parallel, allow_text=False), "calls")
    return ToolPlan(tools, _grammar(tools, parallel=parallel, allow_text=True), "auto")


def _grammar(tools: Sequence[ToolSpec], *, parallel: bool, allow_text: bool) -> str:
    pairs = [(t.name, t.parameters) for t in tools]
    return tool_call_grammar(pairs, parallel=parallel, allow_text=allow_text)


def call_ids(seed: int | None, prompt: Sequence[int]) -> Callable[[int], str]:
    """Names for an answer's calls, ``call_<24 hex>``: with a seed, derived from it and the
    prompt (the same request gives the same ids; another turn of the conversation, whose prompt
    differs, gives others); without one, random."""
    if seed is None:
        salt = secrets.token_bytes(16)
    else:
        digest = hashlib.sha256(str(seed).encode())
        digest.update(b"".join(t.to_bytes(4, "little", signed=True) for t in prompt))
        salt = digest.digest()

    def call_id(index: int) -> str:
        return "call_" + hashlib.sha256(salt + index.to_bytes(4, "little")).hexdigest()[:24]

    return call_id
