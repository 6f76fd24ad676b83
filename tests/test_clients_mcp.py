"""An MCP server's tool used through ``moa serve``: the OpenAI Agents SDK starts the small stdio
server kept in tests/ (mcp_server_capitals.py), lists its tool, offers it to the stack, and
calls it when the stack's aggregator asks."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import openai
from agents import Agent, OpenAIChatCompletionsModel, Runner, set_tracing_disabled
from agents.mcp import MCPServerStdio

from clients_harness import QUIET_ENV, serve_tool_stack
from moakit.testing.fake_backend import ScriptedCall, ToolScript

set_tracing_disabled(True)

SERVER = Path(__file__).with_name("mcp_server_capitals.py")
SCRIPT = ToolScript(
    rounds=[[ScriptedCall("capital_of", {"country": "France"})]],
    final="The capital of France is Paris.",
)


async def test_an_mcp_tool_runs_through_the_stack(tmp_path: Path) -> None:
    calls_log = tmp_path / "mcp-calls.jsonl"
    params = {
        "command": sys.executable,
        "args": [str(SERVER)],
        "env": {**QUIET_ENV, "MCP_CALLS_LOG": str(calls_log)},
    }
    with serve_tool_stack(SCRIPT) as stack:
        client = openai.AsyncOpenAI(base_url=stack.base_url, api_key="unused", max_retries=0)
        async with MCPServerStdio(params=params, name="capitals") as mcp:  # type: ignore[arg-type]
            agent = Agent(
                name="geography",
                instructions="Answer with the tools' help, briefly.",
                mcp_servers=[mcp],
                model=OpenAIChatCompletionsModel(model=stack.model, openai_client=client),
            )
            result = await Runner.run(agent, "What is the capital of France?")
        assert result.final_output == SCRIPT.final
        # The tool really ran, in the MCP server's process, with the scripted arguments.
        lines = calls_log.read_text().splitlines()
        assert [json.loads(line) for line in lines] == [
            {"tool": "capital_of", "arguments": {"country": "France"}}
        ]
        bodies = stack.assert_aggregator_acted(requests=2)
        assert [t["function"]["name"] for t in bodies[0]["tools"]] == ["capital_of"]
        (result_message,) = [m for m in bodies[1]["messages"] if m["role"] == "tool"]
        assert "Paris" in json.dumps(result_message["content"])
        stack.assert_advised(times=1)
