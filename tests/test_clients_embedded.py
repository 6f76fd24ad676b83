"""End to end on the embedded model: a stack of real llama.cpp members (Qwen2.5-Coder-0.5B: two
proposers and the aggregator) behind ``moa serve``, driven by openai-python through a tool loop
with one tool. No network, no key."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import openai
import pytest
from openai.types.chat import (
    ChatCompletionMessageFunctionToolCall,
    ChatCompletionMessageParam,
    ChatCompletionToolParam,
)

import tool_schemas
from moakit import parse_config
from moakit.server import create_app
from server_harness import serve

pytestmark = pytest.mark.embedded

STACK = {
    "name": "local-tools",
    "defaults": {
        "provider": "local",
        "max_tokens": 16,
        "options": {"n_ctx": 2048, "n_seq_max": 4},
    },
    "layers": [[{"model": "qwen2.5-coder-0.5b", "n": 2, "seed": 1, "temperature": 0.7}]],
    "aggregator": {
        "model": "qwen2.5-coder-0.5b",
        "seed": 7,
        "temperature": 0.0,
        "max_tokens": 48,
    },
}
PARAMETERS: dict[str, Any] = tool_schemas.WEATHER
WEATHER: ChatCompletionToolParam = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": PARAMETERS,
    },
}
ASK: list[ChatCompletionMessageParam] = [
    {"role": "user", "content": "What's the weather in Paris, in celsius?"}
]
DETAILS = {"moa_details": True}


def get_weather(city: str, unit: str) -> str:
    return f"18 degrees {unit} and sunny in {city}"


def test_a_tool_loop_through_a_served_embedded_stack() -> None:
    app = create_app({"local-tools": parse_config(STACK)}, api_keys=[])
    with serve(app) as base:
        client = openai.OpenAI(base_url=base, api_key="unused", max_retries=0, timeout=240)
        first = client.chat.completions.create(
            model="local-tools",
            messages=ASK,
            tools=[WEATHER],
            tool_choice="required",
            extra_body=DETAILS,
        )
        choice = first.choices[0]
        assert choice.finish_reason == "tool_calls"
        made = choice.message.tool_calls or []
        calls = [c for c in made if isinstance(c, ChatCompletionMessageFunctionToolCall)]
        assert calls and len(calls) == len(made)
        assert all(c.function.name == "get_weather" for c in calls)
        arguments = json.loads(calls[0].function.arguments)
        jsonschema.validate(arguments, PARAMETERS)  # the grammar held it to the schema
        assert arguments["city"].lower() == "paris"
        # The proposers advised (one layer of two) on this user turn.
        moa = (first.model_extra or {})["moa"]
        assert [len(layer["members"]) for layer in moa["layers"]] == [2]

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
        for call in calls:
            result = get_weather(**json.loads(call.function.arguments))
            history.append({"role": "tool", "tool_call_id": call.id, "content": result})
        # The 0.5B model tends to call again after a result: "none" asks for the answer.
        second = client.chat.completions.create(
            model="local-tools",
            messages=history,
            tools=[WEATHER],
            tool_choice="none",
            max_tokens=32,
            extra_body=DETAILS,
        )
        answer = second.choices[0]
        assert not answer.message.tool_calls
        assert (answer.message.content or "").strip()
        # The advice of the user turn was reused: no proposer ran for the tool result.
        assert (second.model_extra or {})["moa"]["layers"] == []
