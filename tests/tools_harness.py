"""Shared by the wire tool tests: a stack whose aggregator answers with tool calls (a test
double behind the real HTTP server), and the tool it calls."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest

import moakit.engine.layered
from moakit import parse_config
from moakit.engine import Stack
from moakit.engine.advice import AdviceCache
from moakit.messages import ChatRequest, Completion, ToolCall
from moakit.testing.models import FunctionModel

WEATHER_PARAMETERS = {
    "type": "object",
    "properties": {"city": {"type": "string"}},
    "required": ["city"],
    "additionalProperties": False,
}
CHAT_WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": WEATHER_PARAMETERS,
    },
}
RESPONSES_WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "Current weather in a city",
    "parameters": WEATHER_PARAMETERS,
}
ASK = [{"role": "user", "content": "Weather in Paris?"}]
FINAL = "It is 18 C and sunny in Paris."


@pytest.fixture(autouse=True)
def fresh_advice(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts with no advice kept from another (the cache is per process)."""
    monkeypatch.setattr(moakit.engine.layered, "ADVICE", AdviceCache())


def weather_call(arguments: str = '{"city": "Paris"}', call_id: str = "call_1") -> ToolCall:
    return ToolCall(call_id, "get_weather", arguments)


def agent_aggregator(*replies: Completion | str) -> FunctionModel:
    """Answers ``replies`` in turn (the last from then on), but always ``FINAL`` once the
    conversation ends with a tool result: an agent's model, in two steps."""
    seen: list[int] = []

    def fn(request: ChatRequest) -> Completion | str:
        if request.messages[-1].role == "tool":
            return FINAL
        seen.append(1)
        return replies[min(len(seen), len(replies)) - 1]

    return FunctionModel(fn, name="agg", tools=True)


def calls(*made: ToolCall, text: str = "") -> Completion:
    return Completion(text=text, tool_calls=made)


def proposer(name: str) -> FunctionModel:
    return FunctionModel(lambda r: f"{name}: call get_weather for Paris", name=name)


def tool_stack(agg: FunctionModel, **extra: Any) -> tuple[Stack, dict[str, FunctionModel]]:
    models = {"p1": proposer("p1"), "p2": proposer("p2"), "agg": agg}
    member = {"base_url": "http://127.0.0.1:9/v1"}
    cfg = parse_config(
        {
            "name": "tools",
            "layers": [[{**member, "model": "p1"}, {**member, "model": "p2"}]],
            "aggregator": {**member, "model": "agg"},
            **extra,
        }
    )
    return Stack(cfg, models=dict(models)), models


def sse_events(response: httpx.Response) -> list[dict[str, Any]]:
    """The JSON payloads of an SSE body (``[DONE]`` and comments left out)."""
    out = []
    for line in response.text.splitlines():
        if line.startswith("data:") and line != "data: [DONE]":
            out.append(json.loads(line[5:]))
    return out


def called(models: dict[str, FunctionModel]) -> Callable[[str], int]:
    return lambda name: len(models[name].requests)


def stream_post(base: str, path: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{base}{path}", json={**body, "stream": True}, timeout=10)
