"""LangGraph's prebuilt ReAct agent over langchain-openai's ChatOpenAI pointed at ``moa serve``:
two tool calls in one answer, run in parallel by the graph, then the final answer."""

from __future__ import annotations

import pytest
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI
from langgraph.prebuilt import create_react_agent

from clients_harness import ToolLog, serve_tool_stack
from moakit.testing.fake_backend import ScriptedCall, ToolScript

SCRIPT = ToolScript(
    rounds=[
        [
            ScriptedCall("get_weather", {"city": "Paris"}),
            ScriptedCall("get_weather", {"city": "Lyon"}),
        ]
    ],
    final="Paris: 18 C. Lyon: 21 C.",
)
TEMPERATURES = {"Paris": "18 C", "Lyon": "21 C"}


# create_react_agent is what the issue names; LangGraph 1.x points to langchain.agents (a
# package this project does not install) with a deprecation warning.
@pytest.mark.filterwarnings("ignore:create_react_agent has been moved")
@pytest.mark.parametrize("streaming", [False, True], ids=["whole", "streamed"])
async def test_the_react_agent_calls_tools_through_the_stack(streaming: bool) -> None:
    log = ToolLog()

    @tool
    def get_weather(city: str) -> str:
        """Current weather in a city."""
        log.record("get_weather", city=city)
        return TEMPERATURES[city]

    with serve_tool_stack(SCRIPT) as stack:
        llm = ChatOpenAI(
            model=stack.model,
            base_url=stack.base_url,
            api_key="unused",  # type: ignore[arg-type]
            max_retries=0,
            streaming=streaming,
        )
        agent = create_react_agent(llm, tools=[get_weather])
        state = await agent.ainvoke({"messages": [("user", "Weather in Paris and Lyon?")]})
        assert state["messages"][-1].content == SCRIPT.final
        assert sorted(log.calls, key=str) == [
            ("get_weather", {"city": "Lyon"}),
            ("get_weather", {"city": "Paris"}),
        ]
        bodies = stack.assert_aggregator_acted(requests=2)
        results = [m["content"] for m in bodies[1]["messages"] if m["role"] == "tool"]
        assert results == ["18 C", "21 C"]
        stack.assert_advised(times=1)
