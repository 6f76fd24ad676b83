"""openai-python against ``moa serve`` whose members are real HTTP upstreams (the fault
backend): tool calls an upstream streams as ``delta.tool_calls`` fragments travel through the
adapter, the engine's checks and the server's wire back to the SDK.

tests/test_server_tools.py covers the wire itself with in-process test doubles (shapes, order,
400s); these tests add the whole path over HTTP on both sides, and the stream rule with an
upstream whose first attempt streams schema-invalid arguments.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam, ChatCompletionToolParam

from clients_harness import ToolStack, serve_tool_stack
from moakit.testing.fake_backend import Fault, ScriptedCall, ToolScript

WEATHER: ChatCompletionToolParam = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"enum": ["C", "F"]}},
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}
ASK: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Weather in Paris and Rome?"}]
PARIS = {"city": "Paris", "unit": "C"}
ROME = {"city": "Rome", "unit": "C"}
SCRIPT = ToolScript(
    rounds=[[ScriptedCall("get_weather", PARIS), ScriptedCall("get_weather", ROME)]],
    final="Paris: 18 C. Rome: 24 C.",
)


def client(stack: ToolStack) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=stack.base_url, api_key="unused", max_retries=0)


async def first_step(stack: ToolStack, streamed: bool) -> Any:
    """The SDK's view of the first answer: a message with tool calls."""
    c = client(stack)
    if not streamed:
        completion = await c.chat.completions.create(
            model=stack.model, messages=ASK, tools=[WEATHER]
        )
        return completion.choices[0]
    # The SDK's own stream helper assembles the deltas into whole calls.
    async with c.chat.completions.stream(model=stack.model, messages=ASK, tools=[WEATHER]) as s:
        async for _event in s:
            pass
        final = await s.get_final_completion()
    return final.choices[0]


@pytest.mark.parametrize("streamed", [False, True], ids=["whole", "streamed"])
async def test_a_two_step_loop_over_http_upstreams(streamed: bool) -> None:
    with serve_tool_stack(SCRIPT) as stack:
        choice = await first_step(stack, streamed)
        assert choice.finish_reason == "tool_calls"
        calls = choice.message.tool_calls
        assert [json.loads(c.function.arguments) for c in calls] == [PARIS, ROME]
        assert len({c.id for c in calls}) == 2
        history: list[ChatCompletionMessageParam] = [
            *ASK,
            {
                "role": "assistant",
                "tool_calls": [
                    {
                        "id": c.id,
                        "type": "function",
                        "function": {"name": c.function.name, "arguments": c.function.arguments},
                    }
                    for c in calls
                ],
            },
        ]
        for call, temperature in zip(calls, ("18 C", "24 C"), strict=True):
            history.append({"role": "tool", "tool_call_id": call.id, "content": temperature})
        stream = await client(stack).chat.completions.create(
            model=stack.model, messages=history, tools=[WEATHER], stream=True
        )
        chunks = [chunk async for chunk in stream]
        text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
        assert text == SCRIPT.final
        bodies = stack.assert_aggregator_acted(requests=2)
        # The upstream got the calls back with the ids it made, and their results.
        sent = bodies[1]["messages"]
        assert [m["tool_call_id"] for m in sent if m["role"] == "tool"] == [c.id for c in calls]
        stack.assert_advised(times=1)


async def test_an_attempts_invalid_streamed_arguments_never_reach_the_client() -> None:
    # The aggregator's first attempt streams arguments its tool's schema refuses ("city" a
    # number, 12345); the retry is valid. The client must see the retry's calls only.
    fault = Fault("bad_tool_arguments", times=1)
    retry = {"model": "agg", "retries": 1}
    with serve_tool_stack(SCRIPT, fault=fault, aggregator=retry) as stack:
        async with httpx.AsyncClient(timeout=10) as http:
            response = await http.post(
                f"{stack.base_url}/chat/completions",
                json={"model": stack.model, "messages": ASK, "tools": [WEATHER], "stream": True},
            )
        assert response.status_code == 200
        arguments: dict[int, str] = {}
        for line in response.text.splitlines():
            if not line.startswith("data: {"):
                continue
            for choice in json.loads(line[6:])["choices"]:
                for call in choice["delta"].get("tool_calls") or ():
                    piece = call.get("function", {}).get("arguments", "")
                    arguments[call["index"]] = arguments.get(call["index"], "") + piece
        assert [json.loads(a) for a in arguments.values()] == [PARIS, ROME]
        assert "12345" not in response.text
        assert stack.backend.stats.faults_by_kind == {"bad_tool_arguments": 1}
        stack.assert_aggregator_acted(requests=2)
