"""The OpenAI Agents SDK with ``moa serve`` as its model: an agent with two function tools runs
its loop through the stack to the final answer, whole and streamed, on the Chat Completions wire
(``OpenAIChatCompletionsModel``) and on the Responses wire (``OpenAIResponsesModel``, the SDK's
default)."""

from __future__ import annotations

import openai
import pytest
from agents import (
    Agent,
    Model,
    OpenAIChatCompletionsModel,
    OpenAIResponsesModel,
    Runner,
    function_tool,
    set_tracing_disabled,
)

from clients_harness import ToolLog, ToolStack, serve_tool_stack
from moakit.testing.fake_backend import ScriptedCall, ToolScript

# The SDK exports traces to OpenAI by default: never from a test (the environment variable is
# set too, while a stack is served).
set_tracing_disabled(True)

SCRIPT = ToolScript(
    rounds=[
        [ScriptedCall("get_weather", {"city": "Paris"})],
        [ScriptedCall("get_local_time", {"city": "Paris", "format": "24h"})],
    ],
    final="In Paris it is 18 C and sunny; the local time is 14:05.",
)


def sdk_model(stack: ToolStack, wire: str) -> Model:
    client = openai.AsyncOpenAI(base_url=stack.base_url, api_key="unused", max_retries=0)
    if wire == "responses":
        return OpenAIResponsesModel(model=stack.model, openai_client=client)
    return OpenAIChatCompletionsModel(model=stack.model, openai_client=client)


def weather_agent(stack: ToolStack, log: ToolLog, wire: str = "chat") -> Agent:
    @function_tool
    def get_weather(city: str) -> str:
        """Current weather in a city."""
        log.record("get_weather", city=city)
        return "18 C and sunny"

    @function_tool
    def get_local_time(city: str, format: str) -> str:
        """Local time in a city, as "12h" or "24h"."""
        log.record("get_local_time", city=city, format=format)
        return "14:05"

    return Agent(
        name="weather",
        instructions="Answer with the tools' help, briefly.",
        tools=[get_weather, get_local_time],
        model=sdk_model(stack, wire),
    )


@pytest.mark.parametrize("streamed", [False, True], ids=["whole", "streamed"])
@pytest.mark.parametrize("wire", ["chat", "responses"])
async def test_an_agent_with_two_tools_runs_to_its_final_answer(wire: str, streamed: bool) -> None:
    log = ToolLog()
    with serve_tool_stack(SCRIPT) as stack:
        agent = weather_agent(stack, log, wire)
        if streamed:
            run = Runner.run_streamed(agent, "What is the weather and the time in Paris?")
            async for _event in run.stream_events():
                pass
            final = run.final_output
        else:
            result = await Runner.run(agent, "What is the weather and the time in Paris?")
            final = result.final_output
        assert final == SCRIPT.final
        assert log.calls == [
            ("get_weather", {"city": "Paris"}),
            ("get_local_time", {"city": "Paris", "format": "24h"}),
        ]
        # Three agent steps, one user turn: the proposers advised once.
        bodies = stack.assert_aggregator_acted(requests=3)
        stack.assert_advised(times=1)
        # The tool results reached the aggregator as tool messages.
        assert [m["content"] for m in bodies[2]["messages"] if m["role"] == "tool"] == [
            "18 C and sunny",
            "14:05",
        ]
        assert all(bool(body.get("stream")) is streamed for body in bodies)


async def test_advice_every_iteration_asks_the_proposers_at_each_step() -> None:
    # The other side of the advice-reuse assertion: with advice refreshed on every tool
    # iteration, the same run asks the proposers once per agent step.
    log = ToolLog()
    with serve_tool_stack(SCRIPT, advice={"refresh": "every_iteration"}) as stack:
        result = await Runner.run(weather_agent(stack, log), "Weather and time in Paris?")
        assert result.final_output == SCRIPT.final
        stack.assert_aggregator_acted(requests=3)
        stack.assert_advised(times=3)
