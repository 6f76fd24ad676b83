"""Tool calls through a stack, in the engine: the final aggregator acts on the caller's tools,
proposers advise from a text-only view, advice is reused within a user turn, and a tool call
that its tool's schema refuses never leaves."""

from __future__ import annotations

from typing import Any

import pytest

from moakit import ConfigError, Stack, parse_config
from moakit.events import TextDelta, ToolCalls
from moakit.messages import ChatRequest, Completion, ForceTool, Message, ToolCall, ToolSpec
from moakit.testing.models import FunctionModel

WEATHER = ToolSpec(
    name="get_weather",
    description="Current weather in a city",
    parameters={
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
        "additionalProperties": False,
    },
)
ASK = [Message.user("Weather in Paris?")]


def config(**extra: Any) -> Any:
    return parse_config(
        {
            "layers": [[{"model": "a"}, {"model": "b"}]],
            "aggregator": {"model": "agg"},
            "references": {"formatter": "paper"},
            **extra,
        }
    )


def proposer(name: str) -> FunctionModel:
    return FunctionModel(lambda r: f"{name}: call get_weather for Paris", name=name)


def calling(*replies: Completion | str) -> FunctionModel:
    """An aggregator answering ``replies`` in turn (the last one from then on)."""
    seen: list[int] = []

    def fn(request: ChatRequest) -> Completion | str:
        seen.append(1)
        return replies[min(len(seen), len(replies)) - 1]

    return FunctionModel(fn, name="agg", tools=True)


def call(arguments: str = '{"city": "Paris"}', name: str = "get_weather") -> Completion:
    return Completion(text="", tool_calls=(ToolCall("call_1", name, arguments),))


def models(agg: FunctionModel) -> dict[str, Any]:
    return {"a": proposer("a"), "b": proposer("b"), "agg": agg}


async def test_the_aggregator_acts_and_proposers_advise_from_text() -> None:
    ms = models(calling(call()))
    async with Stack(config(), models=ms) as stack:
        result = await stack.run(ASK, tools=[WEATHER])
    assert result.tool_calls == [ToolCall("call_1", "get_weather", '{"city": "Paris"}')]
    assert result.final == ""  # an answer made only of tool calls is an answer
    assert result.advice == "fresh"
    assert result.aggregator is not None and result.aggregator.tool_calls == result.tool_calls
    (sent,) = ms["agg"].requests
    assert sent.tools == (WEATHER,)
    for name in ("a", "b"):
        (seen,) = ms[name].requests
        assert seen.tools == ()
        assert "cannot call tools" in seen.messages[0].text
        assert "get_weather" in seen.messages[0].text  # told what the aggregator can call


async def test_schema_invalid_arguments_are_a_failed_attempt_never_sent() -> None:
    # Attempt 1 calls with a number for "city"; attempt 2 is valid. The client (the events)
    # must only ever see attempt 2's call.
    ms = models(calling(call('{"city": 75}'), call('{"city": "Paris"}')))
    async with Stack(config(), models=ms) as stack:
        events = [e async for e in stack.events(ASK, tools=[WEATHER])]
    sent = [e for e in events if isinstance(e, ToolCalls)]
    assert [c.arguments for e in sent for c in e.calls] == ['{"city": "Paris"}']
    (agg,) = [e for e in events if hasattr(e, "result")][-1].result.aggregators  # type: ignore[attr-defined]
    assert len(agg.attempts) == 2
    assert "do not match its schema" in (agg.attempts[0].error or "")


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        (call('{"city": "Paris"'), "not a JSON object"),
        (call(name="launch_missiles"), "not an offered tool"),
        (call('{"city": "Paris", "extra": 1}'), "do not match its schema"),
    ],
)
async def test_bad_calls_fall_back_to_the_next_aggregator(reply: Completion, reason: str) -> None:
    bad = calling(reply)
    good = FunctionModel(lambda r: call(), name="fallback", tools=True)
    cfg = parse_config(
        {
            "layers": [[{"model": "a"}]],
            "aggregator": {"model": "agg", "retries": 0, "fallbacks": [{"model": "fallback"}]},
        }
    )
    async with Stack(cfg, models={"a": proposer("a"), "agg": bad, "fallback": good}) as stack:
        result = await stack.run(ASK, tools=[WEATHER])
    assert [a.label for a in result.aggregators] == ["agg", "fallback"]
    assert reason in (result.aggregators[0].error or "")
    assert result.tool_calls[0].arguments == '{"city": "Paris"}'


async def test_required_tool_choice_refuses_a_text_answer() -> None:
    ms = models(calling("It is sunny.", call()))
    request = ChatRequest(messages=ASK, tools=(WEATHER,), tool_choice="required")
    async with Stack(config(), models=ms) as stack:
        result = await stack.run(request)
    assert result.tool_calls and "made none" in (result.aggregators[0].attempts[0].error or "")


async def test_forced_tool_and_no_parallel_calls_are_enforced() -> None:
    two = Completion(
        text="",
        tool_calls=(
            ToolCall("c1", "get_weather", '{"city": "Paris"}'),
            ToolCall("c2", "get_weather", '{"city": "Lyon"}'),
        ),
    )
    ms = models(calling(two, call()))
    request = ChatRequest(
        messages=ASK,
        tools=(WEATHER,),
        tool_choice=ForceTool("get_weather"),
        parallel_tool_calls=False,
    )
    async with Stack(config(), models=ms) as stack:
        result = await stack.run(request)
    assert len(result.tool_calls) == 1
    assert "parallel_tool_calls is false" in (result.aggregators[0].attempts[0].error or "")


def agent_loop_second_request() -> list[Message]:
    return [
        *ASK,
        Message.assistant("", [ToolCall("call_1", "get_weather", '{"city": "Paris"}')]),
        Message.tool("call_1", "18 C and sunny"),
    ]


async def test_advice_is_reused_for_the_tool_iterations_of_a_user_turn() -> None:
    ms = models(calling(call(), "It is 18 C and sunny in Paris."))
    async with Stack(config(), models=ms) as stack:
        first = await stack.run(ASK, tools=[WEATHER])
        second = await stack.run(agent_loop_second_request(), tools=[WEATHER])
    assert first.advice == "fresh" and second.advice == "reused"
    assert second.advice_from == first.run_id
    assert second.layers == [] and second.final == "It is 18 C and sunny in Paris."
    assert len(ms["a"].requests) == 1 and len(ms["b"].requests) == 1
    # The aggregator saw the same advice both times, and the tool result itself.
    agg_requests = ms["agg"].requests
    assert "a: call get_weather" in agg_requests[1].messages[0].text
    assert agg_requests[1].messages[-1].tool_results[0].content == "18 C and sunny"


async def test_every_iteration_asks_the_proposers_again() -> None:
    ms = models(calling(call(), "Sunny."))
    cfg = config(advice={"refresh": "every_iteration"})
    async with Stack(cfg, models=ms) as stack:
        await stack.run(ASK, tools=[WEATHER])
        second = await stack.run(agent_loop_second_request(), tools=[WEATHER])
    assert second.advice == "fresh" and len(ms["a"].requests) == 2
    # The proposers' view of the tool round trip is text, with the result fenced as data.
    view = ms["a"].requests[1].messages
    assert all(not m.tool_calls and not m.tool_results for m in view)
    text = "\n".join(m.text for m in view)
    assert "[called tool get_weather with arguments" in text
    assert "<<<tool-result\n18 C and sunny\n>>>" in text


async def test_a_stack_that_cannot_act_refuses_tools_before_any_call() -> None:
    no_tools = FunctionModel(lambda r: "x", name="agg")
    ms = {"a": proposer("a"), "b": proposer("b"), "agg": no_tools}
    async with Stack(config(), models=ms) as stack:
        with pytest.raises(ConfigError) as err:
            await stack.run(ASK, tools=[WEATHER])
    assert err.value.field == "tools" and "cannot call tools" in str(err.value)
    assert not ms["a"].requests
    stair = parse_config(
        {
            "layers": [[{"model": "a"}]],
            "aggregator": {"model": "agg"},
            "strategy": "staircase",
        }
    )
    prefill = FunctionModel(lambda r: "x", name="agg", prefill=True, tools=True)
    async with Stack(stair, models={"a": proposer("a"), "agg": prefill}) as stack:
        with pytest.raises(ConfigError, match="staircase"):
            await stack.run(ASK, tools=[WEATHER])


async def test_a_tool_schema_the_engine_cannot_apply_is_refused_naming_the_field() -> None:
    bad = ToolSpec(name="f", parameters={"type": "object", "pattern": "(a)\\1"})
    async with Stack(config(), models=models(calling(call()))) as stack:
        with pytest.raises(ConfigError) as err:
            await stack.run(ASK, tools=[WEATHER, bad])
    assert err.value.field == "tools.1.function.parameters"


async def test_streamed_text_then_calls_arrive_in_order() -> None:
    reply = Completion(
        text="Let me check.", tool_calls=(ToolCall("c", "get_weather", '{"city":"P"}'),)
    )
    async with Stack(config(), models=models(calling(reply))) as stack:
        events = [e async for e in stack.events(ASK, tools=[WEATHER])]
    out = [type(e).__name__ for e in events if isinstance(e, TextDelta | ToolCalls)]
    assert out[-1] == "ToolCalls" and "TextDelta" in out
