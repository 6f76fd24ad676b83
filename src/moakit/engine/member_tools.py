"""Tool-using members (the TUMIX idea): a member may use built-in tools inside its own answer,
so one layer can mix strategies: reason in text, write and run a program, check and correct.

A member with ``tools = ["python"]`` is offered a ``python`` tool. When it calls it, the engine
runs the program in ``moakit.sandbox`` (a separate process with time and memory limits and no
network, as the HumanEval scorer does), sends the output back as the tool's result, and asks
again; after ``MAX_ROUNDS`` rounds it must answer in text. A member with ``tool_choice =
"required"`` must call a tool in its first round, and then answers in text.

The text round shows the member its own exchanges as text (its program in a code block, the
output fenced as data after it) and offers no tools: small models shown a tool result in the
chat template's tool format tend to call the tool again and again, or to write a call as text
once no tool is offered. Each exchange is part of the
member's recorded output (``MemberOutput.tool_exchanges``); its answer, the reference the next
layer sees, is the final text.

Only proposers (and aggregators that were not given the caller's tools) use built-in tools:
the caller's tools and the engine's are never mixed in one request.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Literal

from moakit.engine.advice import fenced_result
from moakit.engine.tool_calls import check_tool_calls
from moakit.errors import ModelCallError
from moakit.messages import ChatRequest, Completion, Message, ToolCall, ToolSpec, Usage
from moakit.result import ToolExchange
from moakit.sandbox import SandboxLimits, run_program

MAX_ROUNDS = 3
RESULT_CHARS = 4000  # of a program's output shown back to the member (head and tail kept)
ANSWER_NOW = "\n\nNow write your answer (no more tool calls)."
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


def with_builtin_tools(
    request: ChatRequest, names: list[str], choice: Literal["auto", "required"] = "auto"
) -> ChatRequest:
    """``request`` offering the member's built-in tools (unless the caller's are offered);
    ``choice = "required"``: its first round must call one."""
    if not names or request.tools:
        return request
    tools = tuple(BUILTIN[n] for n in names)
    return replace(request, tools=tools, tool_choice="required" if choice == "required" else None)


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
    rounds = 1 if request.tool_choice == "required" else MAX_ROUNDS
    for round_no in range(rounds + 1):
        last = round_no == rounds
        if last:
            current = replace(request, messages=as_text(messages), tools=(), tool_choice=None)
        else:
            # A required call is required once: with its result, the member answers.
            choice = request.tool_choice if round_no == 0 else None
            current = replace(request, messages=messages, tool_choice=choice)
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


def as_text(messages: list[Message]) -> list[Message]:
    """The member's conversation with its tool exchanges written as text: each call as the
    program it ran (or the call, for another tool), each result fenced as data in a user turn
    that asks for the answer."""
    out: list[Message] = []
    names = {c.id: c.name for m in messages for c in m.tool_calls}
    for message in messages:
        if message.role == "tool":
            results = [
                fenced_result(r.name or names.get(r.tool_call_id, "a tool"), r, RESULT_CHARS)
                for r in message.tool_results
            ]
            if out and out[-1].role == "user":  # several results: one turn
                results.insert(0, out.pop().text.removesuffix(ANSWER_NOW))
            out.append(Message.user("\n\n".join(results) + ANSWER_NOW))
        elif message.role == "assistant" and message.tool_calls:
            lines = [message.text] if message.text else []
            lines += [_call_text(call) for call in message.tool_calls]
            out.append(Message.assistant("\n".join(lines)))
        else:
            out.append(message)
    return out


def _call_text(call: ToolCall) -> str:
    code = call.parsed_arguments().get("code") if call.name == "python" else None
    if isinstance(code, str):
        return f"```python\n{code.rstrip()}\n```"
    return f"[called tool {call.name} with arguments {call.arguments}]"


async def _run(call: ToolCall, limits: SandboxLimits | None) -> tuple[str, bool]:
    code = str(call.parsed_arguments().get("code", ""))
    ran = await run_program(code, limits)
    if ran.ok:
        return ran.output or "(the program printed nothing)", True
    return f"{ran.output}\n{ran.reason}".strip(), False


__all__ = ["BUILTIN", "MAX_ROUNDS", "PYTHON", "answer_with_tools", "with_builtin_tools"]
