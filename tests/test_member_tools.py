"""Tool-using members (``moakit.engine.member_tools``): a member writes a program, the engine
runs it in the sandbox the HumanEval scorer uses, and the member answers from its output."""

from __future__ import annotations

import json
from typing import Any

from moakit import Stack, parse_config
from moakit.messages import ChatRequest, Completion, ToolCall
from moakit.testing.models import FunctionModel

ASK = [{"role": "user", "content": "What is the sum of 0..99999?"}]


def coder(program: str) -> FunctionModel:
    """Calls the python tool with ``program`` until it has a result, then answers with it."""

    def fn(request: ChatRequest) -> Completion | str:
        results = [r for m in request.messages for r in m.tool_results]
        if results:
            return f"The program says: {results[-1].content.strip()}"
        assert [t.name for t in request.tools] == ["python"]
        call = ToolCall("c1", "python", json.dumps({"code": program}))
        return Completion(text="", tool_calls=(call,))

    return FunctionModel(fn, name="coder", tools=True)


def stack(members: dict[str, Any]) -> Any:
    return parse_config(
        {
            "layers": [[{"model": "coder", "tools": ["python"]}, {"model": "talker"}]],
            "aggregator": {"model": "agg"},
            "references": {"formatter": "paper"},
        }
    )


async def test_a_member_runs_its_program_in_the_sandbox_and_answers_from_the_output() -> None:
    models = {
        "coder": coder("print(sum(range(100000)))"),
        "talker": FunctionModel(lambda r: "about five billion", name="talker"),
        "agg": FunctionModel(lambda r: r.messages[0].text.split("\n1. ")[1], name="agg"),
    }
    async with Stack(stack(models), models=models) as s:
        result = await s.run(ASK)
    coder_out = result.layers[0].members[0]
    assert coder_out.output == "The program says: 4999950000"  # only the sandbox knew that
    (exchange,) = coder_out.tool_exchanges
    assert exchange.ok and exchange.result.strip() == "4999950000" and exchange.round == 1
    assert result.final.startswith("The program says: 4999950000")  # the reference it became
    assert not models["talker"].requests[0].tools  # a member without tools is offered none
    assert result.llm_calls == 4  # coder: 2 rounds; talker; aggregator


async def test_a_failing_or_networked_program_is_reported_not_raised() -> None:
    program = "import socket\nsocket.create_connection(('example.com', 80))"
    models = {
        "coder": coder(program),
        "talker": FunctionModel(lambda r: "x", name="talker"),
        "agg": FunctionModel(lambda r: "done", name="agg"),
    }
    async with Stack(stack(models), models=models) as s:
        result = await s.run(ASK)
    (exchange,) = result.layers[0].members[0].tool_exchanges
    assert not exchange.ok and "network access is disabled" in exchange.result


async def test_the_last_round_offers_no_tools() -> None:
    seen: list[int] = []

    def stubborn(request: ChatRequest) -> Completion | str:
        seen.append(len(request.tools))
        if request.tools:
            code = json.dumps({"code": "print(1)"})
            return Completion(text="", tool_calls=(ToolCall(f"c{len(seen)}", "python", code),))
        return "fine, an answer"

    models = {
        "coder": FunctionModel(stubborn, name="coder", tools=True),
        "talker": FunctionModel(lambda r: "x", name="talker"),
        "agg": FunctionModel(lambda r: "done", name="agg"),
    }
    async with Stack(stack(models), models=models) as s:
        result = await s.run(ASK)
    assert seen == [1, 1, 1, 0]
    member = result.layers[0].members[0]
    assert member.output == "fine, an answer" and len(member.tool_exchanges) == 3


def test_a_member_without_tools_keeps_its_identity() -> None:
    from moakit.config import config_hash

    plain = parse_config({"layers": [[{"model": "a"}]], "aggregator": {"model": "a"}})
    assert "tools" not in json.dumps(plain.model_dump())
    tooled = parse_config(
        {"layers": [[{"model": "a", "tools": ["python"]}]], "aggregator": {"model": "a"}}
    )
    assert config_hash(tooled) != config_hash(plain)


async def test_a_required_tool_is_required_in_the_first_round_only() -> None:
    """``tool_choice = "required"``: the first request forces a call (a small model told in
    words to run its program often writes it and imagines the output); with the result in
    hand, the member may answer in text."""
    choices: list[object] = []

    def obedient(request: ChatRequest) -> Completion | str:
        choices.append(request.tool_choice)
        if request.tool_choice == "required":
            code = json.dumps({"code": "print(6 * 7)"})
            return Completion(text="", tool_calls=(ToolCall("c1", "python", code),))
        # The text round: no tools, the program and its output as text (output fenced).
        assert not request.tools and all(m.role != "tool" for m in request.messages)
        assert request.messages[-2].text == "```python\nprint(6 * 7)\n```"
        output = request.messages[-1].text.split("<<<tool-result\n")[1].split("\n>>>")[0]
        return "it is " + output.strip()

    models = {
        "coder": FunctionModel(obedient, name="coder", tools=True),
        "talker": FunctionModel(lambda r: "x", name="talker"),
        "agg": FunctionModel(lambda r: "done", name="agg"),
    }
    config = parse_config(
        {
            "layers": [
                [
                    {"model": "coder", "tools": ["python"], "tool_choice": "required"},
                    {"model": "talker"},
                ]
            ],
            "aggregator": {"model": "agg"},
        }
    )
    async with Stack(config, models=models) as s:
        result = await s.run(ASK)
    assert choices == ["required", None]
    assert result.layers[0].members[0].output == "it is 42"


def test_a_required_tool_needs_tools() -> None:
    import pytest

    from moakit.errors import ConfigError

    with pytest.raises(ConfigError, match="tool_choice"):
        parse_config(
            {"layers": [[{"model": "m", "tool_choice": "required"}]], "aggregator": {"model": "m"}}
        )
