"""Tool-using members (the TUMIX idea): a member may use built-in tools inside its own answer,
so one layer can mix strategies: reason in text, write and run a program, check and correct.

A member with ``tools = ["python"]`` is offered a ``python`` tool. When it calls it, the engine
runs the program in ``moakit.sandbox`` (a separate process with time and memory limits and no
network, as the HumanEval scorer does), sends the output back as the tool's result, and asks
again; after ``MAX_ROUNDS`` rounds it must answer in text. Each exchange is part of the
member's recorded output (``MemberOutput.tool_exchanges``); its answer, the reference the next
layer sees, is the final text.

Only proposers (and aggregators that were not given the caller's tools) use built-in tools:
the caller's tools and the engine's are never mixed in one request.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import replace

from moakit.engine.tool_calls import check_tool_calls
from moakit.errors import ModelCallError
from moakit.messages import ChatRequest, Completion, Message, ToolCall, ToolSpec, Usage
from moakit.result import ToolExchange
from moakit.sandbox import SandboxLimits, run_program

MAX_ROUNDS = 3
PYTHON = ToolSpec(
    name="python",
    description=(
        "Run a Python 3 program and see what it prints (stdout). No network, no files "
        "outside a scratch directory, 10 seconds. Use print() to show results."
    ),
    parameters={
        "type": "object",
        "properties": {"code": {"type": "string", "description": "The whole program."}},
        "required": ["code"],
        "additionalProperties": False,
    },
)
BUILTIN = {"python": PYTHON}


def with_builtin_tools(request: ChatRequest, names: list[str]) -> ChatRequest:
    """``request`` offering the member's built-in tools (unless the caller's are offered)."""
    if not names or request.tools:
        return request
    return replace(request, tools=tuple(BUILTIN[n] for n in names))


async def answer_with_tools(
    ask: Callable[[ChatRequest], Awaitable[Completion]],
    request: ChatRequest,
    exchanges: list[ToolExchange],
    limits: SandboxLimits | None = None,
) -> Completion:
    """The member's final answer: ``ask`` it, run the built-in tools it calls, ask again with
    the results, at most ``MAX_ROUNDS`` times (the last round offers no tools). Usage is the
    sum over the rounds; each exchange is appended to ``exchanges`` as it happens."""
    usage = Usage()
    messages = list(request.messages)
    for round_no in range(MAX_ROUNDS + 1):
        last = round_no == MAX_ROUNDS
        current = replace(request, messages=messages, tools=() if last else request.tools)
        completion = await ask(current)
        usage = usage + completion.usage
        if not completion.tool_calls or last:
            return Completion(
                text=completion.text, finish_reason=completion.finish_reason, usage=usage
            )
        calls = await check_tool_calls(completion.tool_calls, current)
        messages.append(Message.assistant(completion.text, calls))
        for call in calls:
            result, ok = await _run(call, limits)
            exchanges.append(ToolExchange(call=call, result=result, ok=ok, round=round_no + 1))
            messages.append(Message.tool(call.id, result, name=call.name))
    raise ModelCallError("tool rounds exhausted", kind="other")  # unreachable: last round


async def _run(call: ToolCall, limits: SandboxLimits | None) -> tuple[str, bool]:
    code = str(call.parsed_arguments().get("code", ""))
    ran = await run_program(code, limits)
    if ran.ok:
        return ran.output or "(the program printed nothing)", True
    return f"{ran.output}\n{ran.reason}".strip(), False


__all__ = ["BUILTIN", "MAX_ROUNDS", "PYTHON", "answer_with_tools", "with_builtin_tools"]
