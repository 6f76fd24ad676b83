"""The fake backend scripted to answer with tool calls: OpenAI's exact shapes, whole and
streamed, read back with openai-python's own types and stream assembler."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai.lib.streaming.chat import ChatCompletionStreamState
from openai.types.chat import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionMessageParam,
    ChatCompletionToolParam,
)

from moakit.schema import OutputInvalid, check_value
from moakit.testing.fake_backend import (
    Behavior,
    FakeBackend,
    Fault,
    ScriptedAnswer,
    ScriptedCall,
    ToolScript,
    expected_content,
    load_behaviors,
    tool_rounds_done,
)

WEATHER: ChatCompletionToolParam = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}
TIME: ChatCompletionToolParam = {
    "type": "function",
    "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}},
}
ASK: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Weather in Paris and Lyon?"}]
PARIS = ScriptedCall("get_weather", {"city": "Paris", "days": 3})
LYON = ScriptedCall("get_weather", {"city": "Lyon"})
SCRIPT = ToolScript(rounds=[[PARIS, LYON]], final="Sunny in both.")


@pytest.fixture
async def fb() -> AsyncIterator[FakeBackend]:
    async with FakeBackend({"agg": Behavior(tool_calls=SCRIPT)}) as backend:
        yield backend


def client(fb: FakeBackend) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=fb.base_url, api_key="test", max_retries=0, timeout=5)


async def post(fb: FakeBackend, body: dict[str, Any]) -> httpx.Response:
    async with httpx.AsyncClient(timeout=5) as http:
        return await http.post(f"{fb.base_url}/chat/completions", json=body)


async def sse_events(fb: FakeBackend, body: dict[str, Any]) -> list[dict[str, Any]]:
    response = await post(fb, {**body, "stream": True})
    assert response.status_code == 200
    lines = [line for line in response.text.split("\n\n") if line]
    assert lines[-1] == "data: [DONE]"
    return [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]


async def test_whole_answer_is_openais_tool_call_message(fb: FakeBackend) -> None:
    response = await post(fb, {"model": "agg", "messages": ASK, "tools": [WEATHER]})
    raw = response.json()
    (choice,) = raw["choices"]
    assert choice["finish_reason"] == "tool_calls"
    message = choice["message"]
    assert message["content"] is None and message["refusal"] is None
    assert [c["function"]["arguments"] for c in message["tool_calls"]] == [
        '{"city":"Paris","days":3}',
        '{"city":"Lyon"}',
    ]
    completion = ChatCompletion.model_validate(raw)
    calls = completion.choices[0].message.tool_calls or []
    assert [(c.type, c.function.name) for c in calls] == [("function", "get_weather")] * 2  # type: ignore[union-attr]
    ids = [c.id for c in calls]
    assert all(i.startswith("call_") for i in ids) and len(set(ids)) == 2
    # The same conversation gets the same ids; usage counts the calls.
    again = (await post(fb, {"model": "agg", "messages": ASK, "tools": [WEATHER]})).json()
    assert [c["id"] for c in again["choices"][0]["message"]["tool_calls"]] == ids
    assert raw["usage"]["completion_tokens"] > 0


async def test_streamed_calls_come_by_index_name_first_arguments_in_pieces(
    fb: FakeBackend,
) -> None:
    body = {"model": "agg", "messages": ASK, "tools": [WEATHER], "stream_options": {}}
    events = await sse_events(fb, body)
    chunks = [ChatCompletionChunk.model_validate(e) for e in events]
    deltas = [e["choices"][0]["delta"] for e in events]
    # The first chunk: the role, null content, and call 0's id, type and name with no
    # arguments yet (exactly what OpenAI sends).
    assert deltas[0] == {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "index": 0,
                "id": deltas[0]["tool_calls"][0]["id"],
                "type": "function",
                "function": {"name": "get_weather", "arguments": ""},
            }
        ],
        "refusal": None,
    }
    starts = [i for i, d in enumerate(deltas) if "id" in (d.get("tool_calls") or [{}])[0]]
    assert len(starts) == 2 and deltas[starts[1]]["tool_calls"][0]["index"] == 1
    pieces: dict[int, list[str]] = {0: [], 1: []}
    for delta in deltas:
        for call in delta.get("tool_calls") or ():
            if "id" not in call:
                assert set(call) == {"index", "function"} and set(call["function"]) == {"arguments"}
            pieces[call["index"]].append(call["function"]["arguments"])
    assert len(pieces[0]) > 2  # the arguments really arrive in several pieces
    assert "".join(pieces[0]) == '{"city":"Paris","days":3}'
    assert "".join(pieces[1]) == '{"city":"Lyon"}'
    assert events[-1]["choices"][0] == {"index": 0, "delta": {}, "finish_reason": "tool_calls"}
    # openai-python's own stream assembler makes the same calls of it.
    state = ChatCompletionStreamState()
    for chunk in chunks:
        state.handle_chunk(chunk)
    final = state.get_final_completion().choices[0]
    assert final.finish_reason == "tool_calls"
    calls = final.message.tool_calls or []
    assert [c.function.parsed_arguments for c in calls] == [None, None]  # no strict schemas
    assert [json.loads(c.function.arguments) for c in calls] == [
        {"city": "Paris", "days": 3},
        {"city": "Lyon"},
    ]


async def test_openai_client_runs_a_loop_to_the_final_text(fb: FakeBackend) -> None:
    c = client(fb)
    first = await c.chat.completions.create(model="agg", messages=ASK, tools=[WEATHER])
    message = first.choices[0].message
    assert message.tool_calls
    history: list[ChatCompletionMessageParam] = [
        *ASK,
        message.model_dump(exclude_none=True),  # type: ignore[list-item]
    ]
    for call in message.tool_calls:
        history.append({"role": "tool", "tool_call_id": call.id, "content": "18 C"})
    assert tool_rounds_done(history) == 1
    stream = await c.chat.completions.create(
        model="agg", messages=history, tools=[WEATHER], stream=True
    )
    chunks = [chunk async for chunk in stream]
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks) == "Sunny in both."
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert not any(ch.choices[0].delta.tool_calls for ch in chunks)


async def test_no_tools_offered_means_the_usual_text_answer(fb: FakeBackend) -> None:
    c = client(fb)
    plain = await c.chat.completions.create(model="agg", messages=ASK)
    assert plain.choices[0].message.content == expected_content("agg", ASK, 12)
    assert plain.choices[0].message.tool_calls is None
    none = await c.chat.completions.create(
        model="agg", messages=ASK, tools=[WEATHER], tool_choice="none"
    )
    assert none.choices[0].finish_reason == "stop" and not none.choices[0].message.tool_calls


async def test_text_before_calls_streams_first() -> None:
    script = ToolScript(rounds=[[ScriptedCall("get_time")]], text="Let me check.")
    async with FakeBackend({"m": Behavior(tool_calls=script)}) as fb:
        events = await sse_events(fb, {"model": "m", "messages": ASK, "tools": [TIME]})
        whole = (await post(fb, {"model": "m", "messages": ASK, "tools": [TIME]})).json()
    deltas = [e["choices"][0]["delta"] for e in events]
    assert deltas[0] == {"role": "assistant", "content": "Let"}
    first_call = next(i for i, d in enumerate(deltas) if d.get("tool_calls"))
    assert "".join(d.get("content") or "" for d in deltas[:first_call]) == "Let me check."
    assert not any(d.get("content") for d in deltas[first_call:])
    message = whole["choices"][0]["message"]
    assert message["content"] == "Let me check."
    assert message["tool_calls"][0]["function"] == {"name": "get_time", "arguments": "{}"}


async def test_a_callable_script_reads_the_conversation() -> None:
    def by_result(body: Any) -> ScriptedAnswer | None:
        last = body["messages"][-1]
        if last["role"] == "tool":
            return ScriptedAnswer(text=f"The tool said {last['content']}.")
        return ScriptedAnswer(calls=(ScriptedCall("get_time", {}, id="call_fixed"),))

    async with FakeBackend({"m": Behavior(tool_calls=by_result)}) as fb:
        c = client(fb)
        first = await c.chat.completions.create(model="m", messages=ASK, tools=[TIME])
        (call,) = first.choices[0].message.tool_calls or []
        assert call.id == "call_fixed"
        history: list[ChatCompletionMessageParam] = [
            *ASK,
            first.choices[0].message.model_dump(exclude_none=True),  # type: ignore[list-item]
            {"role": "tool", "tool_call_id": "call_fixed", "content": "noon"},
        ]
        second = await c.chat.completions.create(model="m", messages=history, tools=[TIME])
    assert second.choices[0].message.content == "The tool said noon."


async def test_bad_tool_arguments_fault_breaks_the_schema_then_heals() -> None:
    behavior = Behavior(tool_calls=SCRIPT, fault=Fault("bad_tool_arguments", times=1))
    parameters = WEATHER["function"]["parameters"]
    async with FakeBackend({"agg": behavior}) as fb:
        body = {"model": "agg", "messages": ASK, "tools": [WEATHER]}
        bad_events = await sse_events(fb, body)
        good = (await post(fb, body)).json()
        assert fb.stats.faults_by_kind == {"bad_tool_arguments": 1}
    bad_args = "".join(
        call["function"].get("arguments", "")
        for e in bad_events
        for call in e["choices"][0]["delta"].get("tool_calls") or ()
        if call["index"] == 0
    )
    bad = json.loads(bad_args)
    assert isinstance(bad, dict) and bad["city"] == 12345  # a JSON object, the wrong type
    with pytest.raises(OutputInvalid):
        await check_value(bad, parameters)
    for call in good["choices"][0]["message"]["tool_calls"]:
        await check_value(json.loads(call["function"]["arguments"]), parameters)


async def test_truncated_fault_cuts_the_last_calls_arguments(fb: FakeBackend) -> None:
    fb.set_behavior("agg", Behavior(tool_calls=SCRIPT, fault=Fault("truncated")))
    raw = (await post(fb, {"model": "agg", "messages": ASK, "tools": [WEATHER]})).json()
    choice = raw["choices"][0]
    assert choice["finish_reason"] == "length"
    assert choice["message"]["tool_calls"][1]["function"]["arguments"] == '{"city"'


@pytest.mark.parametrize(
    ("extra", "problem"),
    [
        ({"tools": [{"type": "function", "function": {}}]}, "tools[0].function.name"),
        (
            {"messages": [*ASK, {"role": "tool", "tool_call_id": "nope", "content": "x"}]},
            "messages[1]: messages with role 'tool' must be a response",
        ),
    ],
)
async def test_what_openai_refuses_is_a_400(
    fb: FakeBackend, extra: dict[str, Any], problem: str
) -> None:
    response = await post(fb, {"model": "agg", "messages": ASK, **extra})
    assert response.status_code == 400
    assert problem in response.json()["error"]["message"]


async def test_toml_scripts_a_tool_loop(tmp_path: Path) -> None:
    path = tmp_path / "fb.toml"
    path.write_text(
        "[default]\ntokens = 4\n"
        '[models."agg"]\n'
        'tool_rounds = [[{name = "get_weather", arguments = {city = "Paris"}}]]\n'
        'tool_final = "Done."\n'
    )
    default, models = load_behaviors(path)
    assert default.tool_calls is None
    async with FakeBackend(models, default=default) as fb:
        c = client(fb)
        first = await c.chat.completions.create(model="agg", messages=ASK, tools=[WEATHER])
        (call,) = first.choices[0].message.tool_calls or []
        assert call.function.arguments == '{"city":"Paris"}'  # type: ignore[union-attr]
        history: list[ChatCompletionMessageParam] = [
            *ASK,
            first.choices[0].message.model_dump(exclude_none=True),  # type: ignore[list-item]
            {"role": "tool", "tool_call_id": call.id, "content": "18 C"},
        ]
        second = await c.chat.completions.create(model="agg", messages=history, tools=[WEATHER])
        assert second.choices[0].message.content == "Done."
    with pytest.raises(ValueError, match="tool_rounds"):
        path.write_text('[default]\ntool_rounds = [[{arguments = "{}"}]]\n')
        load_behaviors(path)
