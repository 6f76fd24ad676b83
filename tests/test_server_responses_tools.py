"""Function tools on the Responses wire: ``function_call`` output items and their streamed
events, ``function_call_output`` input items, each checked against the ``openai`` package's
own types and read by its client, streamed and not."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from moakit.server import create_app
from server_harness import client, serve
from tools_harness import (
    FINAL,
    RESPONSES_WEATHER,
    agent_aggregator,
    calls,
    fresh_advice,  # noqa: F401  (autouse fixture)
    sse_events,
    stream_post,
    tool_stack,
    weather_call,
)

EVENTS: TypeAdapter[Any] = TypeAdapter(ResponseStreamEvent)
ASK = "Weather in Paris?"


def test_a_function_call_output_item() -> None:
    stack, models = tool_stack(agent_aggregator(calls(weather_call())))
    with serve(create_app({"tools": stack}, api_keys=[])) as base:
        raw = httpx.post(
            f"{base}/responses",
            json={"model": "tools", "input": ASK, "tools": [RESPONSES_WEATHER]},
        ).json()
        sdk = client(base).responses.create(
            model="tools",
            input=ASK,
            tools=[RESPONSES_WEATHER],  # type: ignore[list-item]
            tool_choice={"type": "function", "name": "get_weather"},
            parallel_tool_calls=False,
        )
    Response.model_validate(raw)
    (item,) = raw["output"]  # no text: no message item, the call alone
    assert item["type"] == "function_call" and item["id"].startswith("fc_")
    assert {k: item[k] for k in ("call_id", "name", "arguments", "status")} == {
        "call_id": "call_1",
        "name": "get_weather",
        "arguments": '{"city": "Paris"}',
        "status": "completed",
    }
    assert raw["status"] == "completed" and raw["tools"][0]["name"] == "get_weather"
    (made,) = sdk.output
    assert made.type == "function_call" and made.call_id == "call_1"
    assert sdk.tool_choice.type == "function"  # type: ignore[union-attr]
    assert sdk.parallel_tool_calls is False
    forced = models["agg"].requests[-1]
    assert getattr(forced.tool_choice, "name", None) == "get_weather"
    assert forced.parallel_tool_calls is False


def test_streamed_function_call_events_in_order() -> None:
    reply = calls(
        weather_call('{"city": "Paris"}', "call_a"),
        weather_call('{"city": "Lyon"}', "call_b"),
        text="Checking both.",
    )
    stack, _ = tool_stack(agent_aggregator(reply))
    body = {"model": "tools", "input": ASK, "tools": [RESPONSES_WEATHER]}
    with serve(create_app({"tools": stack}, api_keys=[])) as base:
        raw = sse_events(stream_post(base, "/responses", body))
        with client(base).responses.stream(
            model="tools",
            input=ASK,
            tools=[RESPONSES_WEATHER],  # type: ignore[list-item]
        ) as stream:
            for _ in stream:
                pass
            final = stream.get_final_response()
    for event in raw:
        EVENTS.validate_python(event)
    assert [e["sequence_number"] for e in raw] == list(range(len(raw)))
    kinds = [e["type"] for e in raw]
    text_done = kinds.index("response.output_item.done")
    assert kinds[text_done + 1 :] == [
        *(
            [
                "response.output_item.added",
                "response.function_call_arguments.delta",
                "response.function_call_arguments.done",
                "response.output_item.done",
            ]
            * 2
        ),
        "response.completed",
    ]
    assert raw[text_done]["item"]["type"] == "message"
    call_events = raw[text_done + 1 : -1]
    for group, (index, call_id, arguments) in zip(
        (call_events[:4], call_events[4:]),
        [(1, "call_a", '{"city": "Paris"}'), (2, "call_b", '{"city": "Lyon"}')],
        strict=True,
    ):
        added, delta, done, item_done = group
        assert {e["output_index"] for e in group} == {index}
        assert added["item"]["call_id"] == call_id and added["item"]["arguments"] == ""
        assert added["item"]["status"] == "in_progress"
        assert delta["delta"] == arguments and done["arguments"] == arguments
        assert delta["item_id"] == done["item_id"] == added["item"]["id"]
        assert item_done["item"]["status"] == "completed"
    completed = raw[-1]["response"]
    assert [o["type"] for o in completed["output"]] == ["message", "function_call", "function_call"]
    assert completed["output"][0]["content"][0]["text"] == "Checking both."
    assert [o["id"] for o in completed["output"][1:]] == [
        e["item"]["id"] for e in call_events if e["type"] == "response.output_item.done"
    ]
    # The SDK's own accumulator agrees.
    assert [o.type for o in final.output] == ["message", "function_call", "function_call"]
    assert final.output_text == "Checking both."


def test_a_two_step_loop_with_function_call_output() -> None:
    # The first answer has text and a call: the agent echoes both output items back.
    stack, models = tool_stack(agent_aggregator(calls(weather_call(), text="Let me check.")))
    with serve(create_app({"tools": stack}, api_keys=[])) as base:
        sdk = client(base)
        items: list[Any] = [{"role": "user", "content": ASK}]
        first = sdk.responses.create(
            model="tools",
            input=items,
            tools=[RESPONSES_WEATHER],  # type: ignore[list-item]
        )
        for out in first.output:
            items.append(out.model_dump(exclude_none=True))
            if out.type == "function_call":
                items.append(
                    {"type": "function_call_output", "call_id": out.call_id, "output": "18 C"}
                )
        second = sdk.responses.create(
            model="tools",
            input=items,
            tools=[RESPONSES_WEATHER],  # type: ignore[list-item]
        )
    assert second.output_text == FINAL
    assert len(models["p1"].requests) == 1  # the second request reused the advice
    last = models["agg"].requests[-1].messages
    assert [m.role for m in last][-3:] == ["user", "assistant", "tool"]
    assert last[-2].tool_calls == (weather_call(),) and last[-2].text == "Let me check."
    assert last[-1].tool_results[0].content == "18 C"


def test_a_discarded_attempts_call_never_reaches_the_event_stream() -> None:
    stack, models = tool_stack(
        agent_aggregator(calls(weather_call('{"city": 75}')), calls(weather_call()))
    )
    body = {"model": "tools", "input": ASK, "tools": [RESPONSES_WEATHER]}
    with serve(create_app({"tools": stack}, api_keys=[])) as base:
        raw = sse_events(stream_post(base, "/responses", body))
    sent = [e["delta"] for e in raw if e["type"] == "response.function_call_arguments.delta"]
    assert sent == ['{"city": "Paris"}']
    assert len(models["agg"].requests) == 2


CALL = {"type": "function_call", "call_id": "c1", "name": "get_weather", "arguments": "{}"}


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"tools": [{**RESPONSES_WEATHER, "name": "a b"}]}, "tools.0.name"),
        ({"tools": [RESPONSES_WEATHER, RESPONSES_WEATHER]}, "tools.1.name"),
        (
            {
                "tools": [
                    {**RESPONSES_WEATHER, "parameters": {"type": "object", "pattern": "(a)\\1"}}
                ]
            },
            "tools.0.parameters",
        ),
        (
            {"tools": [RESPONSES_WEATHER], "tool_choice": {"type": "function", "name": "x"}},
            "tool_choice.name",
        ),
        ({"tools": [RESPONSES_WEATHER], "tool_choice": {"type": "file_search"}}, "tool_choice"),
        (
            {"input": [CALL, {"type": "function_call_output", "call_id": "c2", "output": "1"}]},
            "input.1.call_id",
        ),
        ({"input": [{**CALL, "arguments": "not json"}]}, "input.0.arguments"),
        ({"input": [{"type": "function_call", "call_id": "c1", "name": "f"}]}, "input.0.arguments"),
        ({"input": [{**CALL, "role": "user"}]}, "input.0"),
        ({"input": [{"type": "message", "content": "hi"}]}, "input.0.role"),
    ],
)
def test_bad_tool_input_is_a_400_naming_the_field(extra: dict[str, Any], param: str) -> None:
    stack, models = tool_stack(agent_aggregator(calls(weather_call())))
    with serve(create_app({"tools": stack}, api_keys=[])) as base:
        r = httpx.post(f"{base}/responses", json={"model": "tools", "input": ASK, **extra})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param, r.json()
    assert not any(m.requests for m in models.values())
