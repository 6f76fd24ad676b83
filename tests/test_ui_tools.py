"""Tools in the web UI's JSON API: a run offered tools streams the final answer's ``ToolCalls``
event and the advice state; the trace API returns each call's tool calls, the query's final ones,
the input's tool results and whether the advice was fresh or reused; bad tools are a 400 naming
the field."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from moakit import Stack
from moakit.messages import ChatRequest, Message, ToolCall, ToolSpec
from moakit.trace import TraceRecorder, TraceStore, traced_run
from trace_helpers import tool_stack
from ui_app import make_app

KEY = "ui-tools-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
ARGS = '{"city": "<img src=x onerror=alert(1)>"}'


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, TraceStore, Stack]]:
    store = TraceStore(tmp_path / "ui-tools.db")
    stack = tool_stack(ARGS)
    async with stack:
        app = make_app(store, {"tools-ui": stack}, KEY)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://ui.test") as client:
            yield client, store, stack
    store.close()


def sse(text: str) -> list[dict[str, Any]]:
    return [json.loads(m) for m in re.findall(r"^data: (.*)$", text, flags=re.MULTILINE)]


async def test_a_run_with_tools_streams_its_calls_and_is_recorded(
    env: tuple[httpx.AsyncClient, TraceStore, Stack],
) -> None:
    client, store, _ = env
    body = {"stack": "tools-ui", "prompt": "Weather?", "tools": [WEATHER]}
    response = await client.post("/ui/api/run", json=body, headers=AUTH)
    assert response.status_code == 200
    events = sse(response.text)
    (calls,) = [e for e in events if e["type"] == "ToolCalls"]
    assert calls["calls"] == [{"id": "call_1", "name": "get_weather", "arguments": ARGS}]
    finished = events[-1]
    assert finished["type"] == "RunFinished"
    assert finished["result"]["tool_calls"] == calls["calls"]
    assert finished["result"]["advice"] == "fresh"
    run_id = events[0]["run_id"]

    assert store.flush()
    listed = (await client.get("/ui/api/traces", headers=AUTH)).json()["data"]
    assert listed[0]["tool_calls"] == ["get_weather"] and listed[0]["advice"] == "fresh"
    record = (await client.get(f"/ui/api/traces/{run_id}", headers=AUTH)).json()
    stored = [{"id": "call_1", "name": "get_weather", "arguments": ARGS, "arguments_hash": None}]
    assert record["query"]["tool_calls"] == stored
    (aggregator,) = [c for c in record["calls"] if c["role"] == "aggregator"]
    assert aggregator["tool_calls"] == stored
    assert aggregator["model_parameters"]["tools"] == [ToolSpec.from_openai(WEATHER).to_openai()]


async def test_the_trace_api_shows_tool_results_and_reused_advice(
    env: tuple[httpx.AsyncClient, TraceStore, Stack],
) -> None:
    client, store, stack = env
    tools = (ToolSpec.from_openai(WEATHER),)
    ask = [Message.user("Weather?")]
    recorder = TraceRecorder(store, stack=stack)
    await traced_run(stack, ChatRequest(messages=ask, tools=tools), recorder, run_id="first")
    follow = [
        *ask,
        Message.assistant("", [ToolCall("call_1", "get_weather", ARGS)]),
        Message.tool("call_1", "<b>sunny</b>"),
    ]
    await traced_run(stack, ChatRequest(messages=follow, tools=tools), recorder, run_id="second")
    assert store.flush()
    record = (await client.get("/ui/api/traces/second", headers=AUTH)).json()
    query = record["query"]
    assert (query["advice"], query["advice_from"]) == ("reused", "first")
    assert query["output"] == "It is sunny." and query["tool_calls"] == []
    assert query["input"][-1] == {
        "role": "tool",
        "tool_call_id": "call_1",
        "content": "<b>sunny</b>",
    }
    assert query["input"][-2]["tool_calls"][0]["function"]["arguments"] == ARGS
    assert [c["role"] for c in record["calls"]] == ["aggregator"]  # the proposers did not run


@pytest.mark.parametrize(
    ("tools", "param"),
    [
        ({"name": "f"}, "tools"),
        ([{"type": "function", "function": {"name": "no spaces"}}], "tools.0.function.name"),
        ([WEATHER, {"type": "retrieval"}], "tools.1.type"),
        (
            [{"type": "function", "function": {"name": "f", "parameters": "x"}}],
            "tools.0.function.parameters",
        ),
    ],
)
async def test_bad_tools_are_a_400_naming_the_field(
    env: tuple[httpx.AsyncClient, TraceStore, Stack], tools: Any, param: str
) -> None:
    client, store, _ = env
    body = {"stack": "tools-ui", "prompt": "Weather?", "tools": tools}
    response = await client.post("/ui/api/run", json=body, headers=AUTH)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error"
    assert store.flush() and store.list_queries() == []  # nothing ran
