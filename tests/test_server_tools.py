"""Tool calls through ``moa serve`` on the Chat Completions wire: the SDK's own types parse
every body and chunk, a two-step agent loop runs with the proposers' advice reused, bad tool
input is a 400 naming the field before any call, and a discarded attempt's call never
reaches the stream."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from moakit.server import create_app
from moakit.testing.models import FunctionModel
from moakit.trace import TraceStore
from server_harness import client, serve
from tools_harness import (
    ASK,
    CHAT_WEATHER,
    FINAL,
    RESPONSES_WEATHER,
    agent_aggregator,
    calls,
    fresh_advice,  # noqa: F401  (autouse fixture)
    proposer,
    sse_events,
    stream_post,
    tool_stack,
    weather_call,
)


def test_a_tool_call_answer_has_openai_shape() -> None:
    stack, models = tool_stack(agent_aggregator(calls(weather_call())))
    with serve(create_app({"tools": stack}, api_keys=[])) as base:
        r = httpx.post(
            f"{base}/chat/completions",
            json={"model": "tools", "messages": ASK, "tools": [CHAT_WEATHER], "moa_details": True},
        )
    assert r.status_code == 200, r.text
    body = r.json()
    ChatCompletion.model_validate(body)
    (choice,) = body["choices"]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None  # no text: null, as OpenAI sends it
    assert choice["message"]["tool_calls"] == [
        {
            "id": "call_1",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
        }
    ]
    assert body["moa"]["advice"] == "fresh"
    assert body["moa"]["tool_calls"][0]["name"] == "get_weather"
    # The aggregator was offered the tool; the proposers advised from text.
    (sent,) = models["agg"].requests
    assert [t.name for t in sent.tools] == ["get_weather"]
    assert all(not r.tools for r in models["p1"].requests)


def test_streamed_calls_in_openai_shape_and_order() -> None:
    reply = calls(
        weather_call('{"city": "Paris"}', "call_a"),
        weather_call('{"city": "Lyon"}', "call_b"),
        text="Checking both.",
    )
    stack, _ = tool_stack(agent_aggregator(reply))
    body = {
        "model": "tools",
        "messages": ASK,
        "tools": [CHAT_WEATHER],
        "stream_options": {"include_usage": True},
    }
    with serve(create_app({"tools": stack}, api_keys=[])) as base:
        r = stream_post(base, "/chat/completions", body)
        whole = httpx.post(f"{base}/chat/completions", json={**body, "moa_details": True})
    chunks = sse_events(r)
    for chunk in chunks:
        ChatCompletionChunk.model_validate(chunk)
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    text = "".join(d.get("content") or "" for d in deltas)
    call_deltas = [d["tool_calls"] for d in deltas if "tool_calls" in d]
    # Text first, then each call: an opening delta (id, name, empty arguments), then its
    # arguments, index by index.
    first_call = next(i for i, d in enumerate(deltas) if "tool_calls" in d)
    assert text == "Checking both." and all("content" not in d for d in deltas[first_call:])
    assert call_deltas == [
        [
            {
                "index": 0,
                "id": "call_a",
                "type": "function",
                "function": {"name": "get_weather", "arguments": ""},
            }
        ],
        [{"index": 0, "function": {"arguments": '{"city": "Paris"}'}}],
        [
            {
                "index": 1,
                "id": "call_b",
                "type": "function",
                "function": {"name": "get_weather", "arguments": ""},
            }
        ],
        [{"index": 1, "function": {"arguments": '{"city": "Lyon"}'}}],
    ]
    finishes = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
    assert finishes[-1] == "tool_calls" and set(finishes[:-1]) == {None}
    # The usage chunk sums every call of the stack: proposers and aggregator, as the whole
    # (non-streamed) answer to the same request says.
    usage = chunks[-1]["usage"]
    assert chunks[-1]["choices"] == [] and usage == whole.json()["usage"]
    members = whole.json()["moa"]["layers"][0]["members"]
    proposer_tokens = sum(m["usage"]["prompt_tokens"] for m in members)
    assert proposer_tokens > 0 and usage["prompt_tokens"] > proposer_tokens


def test_the_sdk_reads_calls_streamed_and_not() -> None:
    stack, _ = tool_stack(agent_aggregator(calls(weather_call())))
    with serve(create_app({"tools": stack}, api_keys=[])) as base:
        sdk = client(base)
        plain = sdk.chat.completions.create(
            model="tools",
            messages=ASK,  # type: ignore[arg-type]
            tools=[CHAT_WEATHER],  # type: ignore[list-item]
        )
        with sdk.chat.completions.stream(
            model="tools",
            messages=ASK,  # type: ignore[arg-type]
            tools=[CHAT_WEATHER],  # type: ignore[list-item]
        ) as stream:
            events = [e.type for e in stream]
            streamed = stream.get_final_completion()
    for done in (plain, streamed):
        (choice,) = done.choices
        assert choice.finish_reason == "tool_calls"
        (made,) = choice.message.tool_calls or []
        assert made.type == "function"
        assert (made.id, made.function.name) == ("call_1", "get_weather")
        assert made.function.arguments == '{"city": "Paris"}'
    assert "tool_calls.function.arguments.done" in events


def test_a_two_step_agent_loop_reuses_the_advice() -> None:
    """Tool call, tool result, final answer: the second request's proposers are not called."""
    stack, models = tool_stack(agent_aggregator(calls(weather_call())))
    with serve(create_app({"tools": stack}, api_keys=[])) as base:
        sdk = client(base)
        messages: list[Any] = list(ASK)
        first = sdk.chat.completions.create(
            model="tools",
            messages=messages,
            tools=[CHAT_WEATHER],  # type: ignore[list-item]
            extra_body={"moa_details": True},
        )
        message = first.choices[0].message
        messages.append(message.model_dump(exclude_none=True))
        for made in message.tool_calls or []:
            messages.append({"role": "tool", "tool_call_id": made.id, "content": "18 C, sunny"})
        second = sdk.chat.completions.create(
            model="tools",
            messages=messages,
            tools=[CHAT_WEATHER],  # type: ignore[list-item]
            extra_body={"moa_details": True},
        )
    assert second.choices[0].message.content == FINAL
    assert second.choices[0].finish_reason == "stop"
    moa = [(first.model_extra or {})["moa"], (second.model_extra or {})["moa"]]
    assert [m["advice"] for m in moa] == ["fresh", "reused"]
    assert moa[1]["advice_from"] == moa[0]["run_id"]
    assert len(models["p1"].requests) == 1 and len(models["p2"].requests) == 1
    # The aggregator saw the call it made and its result, typed.
    last = models["agg"].requests[-1].messages
    assert last[-2].tool_calls[0].id == "call_1"
    assert last[-1].tool_results[0].content == "18 C, sunny"
    assert last[-1].tool_results[0].name == "get_weather"


def test_a_discarded_attempts_call_never_reaches_the_stream() -> None:
    """The aggregator's first attempt calls with a number for "city" (its schema wants a
    string); the engine retries; the stream carries only the valid call."""
    stack, models = tool_stack(
        agent_aggregator(calls(weather_call('{"city": 75}')), calls(weather_call()))
    )
    body = {"model": "tools", "messages": ASK, "tools": [CHAT_WEATHER]}
    with serve(create_app({"tools": stack}, api_keys=[])) as base:
        r = stream_post(base, "/chat/completions", body)
    assert r.status_code == 200
    chunks = sse_events(r)
    sent = [
        call["function"].get("arguments")
        for c in chunks
        for call in c["choices"][0]["delta"].get("tool_calls") or []
    ]
    assert sent == ["", '{"city": "Paris"}']
    assert len(models["agg"].requests) == 2


def _tool(name: str, parameters: Any = None) -> dict[str, Any]:
    function: dict[str, Any] = {"name": name}
    if parameters is not None:
        function["parameters"] = parameters
    return {"type": "function", "function": function}


CALL_1 = {
    "id": "call_1",
    "type": "function",
    "function": {"name": "get_weather", "arguments": "{}"},
}


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"tools": [_tool("has space")]}, "tools.0.function.name"),
        ({"tools": [_tool("f"), _tool("f")]}, "tools.1.function.name"),
        ({"tools": [{"type": "web_search"}]}, "tools.0"),
        (
            {"tools": [_tool("f", {"type": "object", "pattern": "(a)\\1"})]},
            "tools.0.function.parameters",
        ),
        ({"tools": [_tool("f", {"type": 12})]}, "tools.0.function.parameters"),
        (
            {"tools": [_tool("f")], "tool_choice": {"type": "function", "function": {"name": "g"}}},
            "tool_choice.function.name",
        ),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"tools": [_tool("f")], "tool_choice": "sometimes"}, "tool_choice"),
        ({"tools": [_tool("f")], "parallel_tool_calls": "yes"}, "parallel_tool_calls"),
        (
            {"messages": [*ASK, {"role": "tool", "tool_call_id": "call_9", "content": "1"}]},
            "messages.1.tool_call_id",
        ),
        ({"messages": [*ASK, {"role": "tool", "content": "1"}]}, "messages.1.tool_call_id"),
        ({"messages": [{**ASK[0], "tool_calls": [CALL_1]}]}, "messages.0.tool_calls"),
        (
            {
                "messages": [
                    *ASK,
                    {
                        "role": "assistant",
                        "content": None,
                        "tool_calls": [
                            {**CALL_1, "function": {"name": "get_weather", "arguments": "[1"}}
                        ],
                    },
                ]
            },
            "messages.1.tool_calls.0.function.arguments",
        ),
        (
            {"messages": [*ASK, {"role": "assistant", "tool_calls": [{"id": "c"}]}]},
            "messages.1.tool_calls.0.type",
        ),
    ],
)
def test_bad_tool_input_is_a_400_naming_the_field(extra: dict[str, Any], param: str) -> None:
    stack, models = tool_stack(agent_aggregator(calls(weather_call())))
    with serve(create_app({"tools": stack}, api_keys=[])) as base:
        r = httpx.post(
            f"{base}/chat/completions", json={"model": "tools", "messages": ASK, **extra}
        )
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param, r.json()
    assert not any(m.requests for m in models.values())


def test_tool_messages_reach_the_aggregator_typed() -> None:
    stack, models = tool_stack(agent_aggregator(calls(weather_call())))
    conversation = [
        {"role": "developer", "content": "Be brief."},
        *ASK,
        {"role": "assistant", "content": None, "tool_calls": [CALL_1], "refusal": None},
        {"role": "tool", "tool_call_id": "call_1", "content": [{"type": "text", "text": "18 C"}]},
    ]
    with serve(create_app({"tools": stack}, api_keys=[])) as base:
        done = client(base).chat.completions.create(
            model="tools",
            messages=conversation,  # type: ignore[arg-type]
            tools=[CHAT_WEATHER],  # type: ignore[list-item]
            tool_choice="auto",
            parallel_tool_calls=False,
        )
    assert done.choices[0].message.content == FINAL
    (request,) = models["agg"].requests
    assert [m.role for m in request.messages][-3:] == ["user", "assistant", "tool"]
    assert request.messages[-2].tool_calls == (weather_call("{}"),)
    assert request.messages[-1].tool_results[0].content == "18 C"
    assert request.tool_choice == "auto" and request.parallel_tool_calls is False


def test_a_forced_tool_reaches_the_aggregator() -> None:
    stack, models = tool_stack(agent_aggregator(calls(weather_call())))
    choice = {"type": "function", "function": {"name": "get_weather"}}
    with serve(create_app({"tools": stack}, api_keys=[])) as base:
        r = httpx.post(
            f"{base}/chat/completions",
            json={
                "model": "tools",
                "messages": ASK,
                "tools": [CHAT_WEATHER],
                "tool_choice": choice,
            },
        )
    assert r.status_code == 200, r.text
    assert models["agg"].requests[0].tool_choice is not None
    assert getattr(models["agg"].requests[0].tool_choice, "name", None) == "get_weather"


def test_a_stack_that_cannot_call_tools_is_a_400_before_any_call() -> None:
    agg = FunctionModel(lambda r: "no tools here", name="agg")  # profile.tools is false
    stack, models = tool_stack(agg)
    with serve(create_app({"tools": stack}, api_keys=[])) as base:
        r = httpx.post(
            f"{base}/chat/completions",
            json={"model": "tools", "messages": ASK, "tools": [CHAT_WEATHER]},
        )
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["param"] == "tools" and "cannot call tools" in err["message"]
    assert not any(m.requests for m in models.values())
    assert proposer("x").profile.tools is False


def test_tool_calls_through_a_traced_server(tmp_path: Path) -> None:
    """With the trace store on (as `moa serve` runs by default), tool calls stream and are
    recorded like any run."""
    store = TraceStore(tmp_path / "traces.db")
    stack, _ = tool_stack(agent_aggregator(calls(weather_call())))
    body = {"model": "tools", "messages": ASK, "tools": [CHAT_WEATHER]}
    with serve(create_app({"tools": stack}, api_keys=[], trace_store=store)) as base:
        streamed = stream_post(base, "/chat/completions", body)
        plain = httpx.post(f"{base}/chat/completions", json=body)
    assert plain.status_code == 200 and plain.json()["choices"][0]["finish_reason"] == "tool_calls"
    finishes = [c["choices"][0]["finish_reason"] for c in sse_events(streamed) if c["choices"]]
    assert finishes[-1] == "tool_calls"
    store.flush()
    rows = store.list_queries()
    assert len(rows) == 2 and {r.status for r in rows} == {"complete"}
    store.close()


def test_a_response_format_applies_to_the_final_text_not_to_a_tool_call() -> None:
    """With a JSON format and tools (pydantic-ai's native output does both), an answer made of
    tool calls is passed on; the final text must still match the format."""
    agg = agent_aggregator(calls(weather_call()))
    agg.profile = agg.profile.but(response_format=True)
    stack, _ = tool_stack(agg)
    fmt = {
        "type": "json_schema",
        "json_schema": {"name": "w", "schema": {"type": "object", "required": ["c"]}},
    }
    body = {"model": "tools", "messages": ASK, "tools": [CHAT_WEATHER], "response_format": fmt}
    then = [
        *ASK,
        {"role": "assistant", "content": None, "tool_calls": [CALL_1]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18 C"},
    ]
    with serve(create_app({"tools": stack}, api_keys=[])) as base:
        called = httpx.post(f"{base}/chat/completions", json=body)
        final = httpx.post(f"{base}/chat/completions", json={**body, "messages": then})
    assert called.status_code == 200, called.text
    assert called.json()["choices"][0]["finish_reason"] == "tool_calls"
    # FINAL is prose, not the JSON object the format asks for.
    assert final.status_code == 502 and final.json()["error"]["code"] == "invalid_output"


ODD_VALUES: list[Any] = [
    None,
    1,
    "x",
    [],
    {},
    [1],
    [{}],
    {"type": "function"},
    {"type": "function", "function": {"name": 5}},
    {"type": "function", "name": None},
    [{"type": "function", "function": {"name": "f", "parameters": []}}],
    [{"type": "function", "function": {"name": "f", "parameters": {"$ref": "#"}}}],
    [{"type": "function", "name": "f", "parameters": {"properties": {"a": {"$ref": "#/x"}}}}],
    [{"type": "function", "function": {"name": "f", "strict": "yes"}}],
]


async def test_odd_tool_fields_never_get_a_500() -> None:
    """Every tool field with values of every JSON shape, on both wires: a 4xx (or an
    answer), never a server error."""
    stack, _ = tool_stack(agent_aggregator(calls(weather_call())))
    app = create_app({"tools": stack}, api_keys=[])
    wires = [
        ("/v1/chat/completions", {"model": "tools", "messages": ASK, "tools": [CHAT_WEATHER]}),
        ("/v1/responses", {"model": "tools", "input": "hi", "tools": [RESPONSES_WEATHER]}),
    ]
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as c:
        for field in ("tools", "tool_choice", "parallel_tool_calls"):
            for i, value in enumerate(ODD_VALUES):
                for path, body in wires:
                    stream = i % 2 == 0  # validation comes before the stream either way
                    r = await c.post(path, json={**body, field: value, "stream": stream})
                    assert r.status_code != 500 and "internal_error" not in r.text, (
                        path,
                        field,
                        value,
                        r.text[:300],
                    )
