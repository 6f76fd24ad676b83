"""pydantic-ai with ``moa serve`` as its OpenAI chat model: an agent with tools, and its default
structured output, which is itself a tool call (``final_result``) with ``tool_choice``
"required"."""

from __future__ import annotations

import pytest
from pydantic import BaseModel
from pydantic_ai import Agent
from pydantic_ai.models.openai import OpenAIChatModel
from pydantic_ai.providers.openai import OpenAIProvider

from clients_harness import ToolLog, ToolStack, serve_tool_stack
from moakit.testing.fake_backend import ScriptedCall, ToolScript


class City(BaseModel):
    name: str
    population: int


def chat_model(stack: ToolStack) -> OpenAIChatModel:
    provider = OpenAIProvider(base_url=stack.base_url, api_key="unused")
    return OpenAIChatModel(stack.model, provider=provider)


def population_tool(agent: Agent[None, object], log: ToolLog) -> None:
    @agent.tool_plain
    def get_population(city: str) -> int:
        """The population of a city."""
        log.record("get_population", city=city)
        return 2_100_000


@pytest.mark.parametrize("streamed", [False, True], ids=["whole", "streamed"])
async def test_an_agent_with_a_tool_answers_in_text(streamed: bool) -> None:
    script = ToolScript(
        rounds=[[ScriptedCall("get_population", {"city": "Paris"})]],
        final="Paris has about 2.1 million people.",
    )
    log = ToolLog()
    with serve_tool_stack(script) as stack:
        agent: Agent[None, object] = Agent(chat_model(stack), instructions="Be brief.")
        population_tool(agent, log)
        if streamed:
            async with agent.run_stream("How many people live in Paris?") as run:
                output = await run.get_output()
        else:
            output = (await agent.run("How many people live in Paris?")).output
        assert output == script.final
        assert log.calls == [("get_population", {"city": "Paris"})]
        stack.assert_aggregator_acted(requests=2)
        stack.assert_advised(times=1)


async def test_structured_output_is_a_tool_call_through_the_stack() -> None:
    script = ToolScript(
        rounds=[
            [ScriptedCall("get_population", {"city": "Paris"})],
            [ScriptedCall("final_result", {"name": "Paris", "population": 2_100_000})],
        ]
    )
    log = ToolLog()
    with serve_tool_stack(script) as stack:
        agent: Agent[None, City] = Agent(chat_model(stack), output_type=City)
        population_tool(agent, log)
        result = await agent.run("Which city is the capital of France, and its population?")
        assert result.output == City(name="Paris", population=2_100_000)
        assert log.calls == [("get_population", {"city": "Paris"})]
        bodies = stack.assert_aggregator_acted(requests=2)
        # pydantic-ai's default output mode: the answer must be a call (to final_result).
        assert all(body.get("tool_choice") == "required" for body in bodies)
        assert "final_result" in [t["function"]["name"] for t in bodies[0]["tools"]]
        stack.assert_advised(times=1)
