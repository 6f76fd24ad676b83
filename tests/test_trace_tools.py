"""Tool calls in the trace store: each call's tool calls, the query's final calls and its advice
state (fresh or reused) are recorded and read back; their arguments follow ``store_prompts``
like prompts do (hashes only when off) and are scrubbed of secrets; a store written before
tools existed migrates forward; ``moa trace show`` and the OpenTelemetry export show them."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from moakit import Stack, parse_config
from moakit.cli.main import cli
from moakit.messages import ChatRequest, Completion, Message, ToolCall, ToolSpec
from moakit.result import Result
from moakit.testing.models import FunctionModel
from moakit.trace import TraceRecorder, TraceStore, content_hash, traced_run
from moakit.trace.migrations import MIGRATIONS
from moakit.trace.otel import OtelSink
from moakit.trace.records import CallRecord, QueryRecord, ToolCallRecord
from moakit.trace.redact import Redactor
from trace_helpers import dump_all, raw_bytes

WEATHER = ToolSpec(
    name="get_weather",
    description="Current weather in a city",
    parameters={
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
)
ASK = [Message.user("Weather in Paris?")]
# Markup a terminal or a page must show as characters, never act on.
HOSTILE_CITY = "[bold red]Paris[/] <img src=x onerror=alert(1)>"


def tool_stack(*replies: Completion | str) -> Stack:
    """Two proposers and an aggregator that can call tools, answering ``replies`` in turn."""
    answered: list[int] = []

    def aggregator(request: ChatRequest) -> Completion | str:
        answered.append(1)
        return replies[min(len(answered), len(replies)) - 1]

    config = parse_config(
        {
            "name": "tools-trace",
            "layers": [[{"model": "a"}, {"model": "b"}]],
            "aggregator": {"model": "agg"},
        }
    )
    models = {
        "a": FunctionModel(lambda r: "a: call get_weather for Paris", name="a"),
        "b": FunctionModel(lambda r: "b: get_weather(Paris)", name="b"),
        "agg": FunctionModel(aggregator, name="agg", tools=True),
    }
    return Stack(config, models=models)


def calls(arguments: str) -> Completion:
    return Completion(text="", tool_calls=(ToolCall("call_1", "get_weather", arguments),))


def agent_second_turn(arguments: str, result: str = "18 C and sunny") -> list[Message]:
    """The conversation an agent sends back after running the call."""
    return [
        *ASK,
        Message.assistant("", [ToolCall("call_1", "get_weather", arguments)]),
        Message.tool("call_1", result, name="get_weather"),
    ]


async def agent_loop(
    store: TraceStore, arguments: str, result: str = "18 C and sunny"
) -> tuple[Result, Result]:
    """One user turn of an agent: a tool call, then the answer from the tool's result."""
    stack = tool_stack(calls(arguments), "It is 18 C and sunny in Paris.")
    async with stack:
        recorder = TraceRecorder(store, stack=stack, source="test")
        first = await traced_run(
            stack, ChatRequest(messages=ASK, tools=(WEATHER,)), recorder, run_id="run-call"
        )
        second = await traced_run(
            stack,
            ChatRequest(messages=agent_second_turn(arguments, result), tools=(WEATHER,)),
            recorder,
            run_id="run-answer",
        )
    assert store.flush()
    return first, second


async def test_tool_calls_and_advice_are_recorded_and_read_back(tmp_path: Path) -> None:
    arguments = '{"city": "Paris"}'
    with TraceStore(tmp_path / "tools.db") as store:
        first, second = await agent_loop(store, arguments)
        call_run, answer_run = store.get("run-call"), store.get("run-answer")
    assert call_run is not None and answer_run is not None
    expected = [ToolCallRecord("call_1", "get_weather", arguments)]

    # The run that answered with a call: the query and its aggregator call carry it.
    q = call_run.query
    assert q.status == "complete" and q.output is None
    assert q.tool_calls == expected
    assert (q.advice, q.advice_from) == ("fresh", None) == (first.advice, first.advice_from)
    aggregator = next(c for c in call_run.calls if c.role == "aggregator")
    assert aggregator.tool_calls == expected and aggregator.finish_reason == "tool_calls"
    assert aggregator.ok and aggregator.output == ""
    assert aggregator.model_parameters["tools"] == [WEATHER.to_openai()]
    assert all(not c.tool_calls for c in call_run.calls if c.role == "proposer")

    # The next iteration of the same user turn reused the advice: no proposer ran.
    q = answer_run.query
    assert (q.advice, q.advice_from) == ("reused", "run-call")
    assert q.advice_from == first.run_id == second.advice_from
    assert q.tool_calls == [] and q.output == "It is 18 C and sunny in Paris."
    assert [c.role for c in answer_run.calls] == ["aggregator"]
    # Its input holds the call and the tool's result, as the aggregator received them.
    assert q.input is not None
    assistant, tool = q.input[-2], q.input[-1]
    assert assistant["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": arguments}
    assert tool == {"role": "tool", "tool_call_id": "call_1", "content": "18 C and sunny"}
    agg_input = answer_run.calls[0].input
    assert agg_input is not None and agg_input[-1]["content"] == "18 C and sunny"

    # The JSON export carries it all.
    exported = answer_run.to_json()["query"]
    assert exported["advice"] == "reused" and exported["advice_from"] == "run-call"
    assert call_run.to_json()["query"]["tool_calls"] == [
        {"id": "call_1", "name": "get_weather", "arguments": arguments, "arguments_hash": None}
    ]


async def test_tool_arguments_and_results_follow_store_prompts(tmp_path: Path) -> None:
    marker = "ZEBRA-CITY-4471"
    result_marker = "TOOL-RESULT-8812"
    arguments = json.dumps({"city": marker})
    records = {}
    for store_prompts in (True, False):
        path = tmp_path / f"prompts-{store_prompts}.db"
        with TraceStore(path, store_prompts=store_prompts) as store:
            await agent_loop(store, arguments, result_marker)
            records[store_prompts] = (path, store.get("run-call"), store.get("run-answer"))
    path, kept, _ = records[True]
    values = dump_all(path)
    assert any(marker in v for v in values)  # the check below can see it
    assert any(result_marker in v for v in values)
    path, call_run, answer_run = records[False]
    # Neither the arguments (the model's, from the user's data) nor the tool's result.
    assert not any(marker in v for v in dump_all(path))
    assert not any(result_marker in v for v in dump_all(path))
    assert marker.encode() not in raw_bytes(path)
    assert call_run is not None and answer_run is not None and kept is not None
    for record in (call_run.query, *call_run.calls):
        for call in record.tool_calls:
            assert call.name == "get_weather" and call.id == "call_1"
            assert call.arguments is None and call.arguments_hash == content_hash(arguments)
    assert call_run.query.tool_calls  # names and ids are still there
    assert answer_run.query.input is None and answer_run.query.advice == "reused"


async def test_secrets_in_tool_arguments_are_scrubbed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    canary = "sk-canary-tool-0a1b2c3d4e"
    monkeypatch.setenv("OPENAI_API_KEY", canary)
    path = tmp_path / "secrets.db"
    with TraceStore(path) as store:
        await agent_loop(store, json.dumps({"city": f"key {canary}"}))
        record = store.get("run-call")
    assert record is not None
    assert record.query.tool_calls[0].arguments == '{"city": "key ***"}'
    assert not any(canary in v for v in dump_all(path))
    assert canary.encode() not in raw_bytes(path)


def test_the_store_scrubs_tool_calls_itself(tmp_path: Path) -> None:
    """The store does not trust that the engine scrubbed (a plugin sink, a record built by
    hand): a key in a call's arguments is replaced where it is written."""
    key = "sk-store-canary-77aa"
    path = tmp_path / "scrub.db"
    with TraceStore(path, redactor=Redactor([key])) as store:
        query = QueryRecord(id="q1", stack_name="s", config_hash=None, start_time=1.0)
        store.query_started(query)
        call = CallRecord(
            query_id="q1", layer=1, index=0, role="aggregator", label="agg", provider="p",
            model_name="m", output="", tool_calls=[ToolCallRecord("c1", "f", f'{{"k": "{key}"}}')],
        )  # fmt: skip
        store.call_finished(call)
        query.tool_calls, query.status = list(call.tool_calls), "complete"
        store.query_finished(query, [call])
        assert store.flush()
        record = store.get("q1")
    assert record is not None
    assert record.calls[0].tool_calls[0].arguments == '{"k": "***"}'
    assert record.query.tool_calls[0].arguments == '{"k": "***"}'
    assert not any(key in v for v in dump_all(path))


def _old_store(path: Path) -> None:
    """A store as the moakit before tools wrote it: the migrations up to m003, one query."""
    names = [name for name, _ in MIGRATIONS]
    assert names.index("m004_tool_calls") == 3  # the new one comes after the shipped ones
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("CREATE TABLE _moakit_migrations (name TEXT PRIMARY KEY, applied_at REAL)")
        for name, fn in MIGRATIONS[:3]:
            fn(db)
            db.execute("INSERT INTO _moakit_migrations VALUES (?, 0)", (name,))
        db.execute(
            "INSERT INTO queries (id, stack_name, start_time, status, output)"
            " VALUES ('old-run', 's', 1.0, 'complete', 'an old answer')"
        )
        db.execute(
            "INSERT INTO calls (query_id, layer, idx, role, label, provider, model_name,"
            " output, start_time, end_time, latency_s)"
            " VALUES ('old-run', 1, 0, 'aggregator', 'agg', 'p', 'm', 'an old answer', 1, 2, 1)"
        )
    finally:
        db.close()


async def test_a_store_from_before_tools_migrates_forward(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    _old_store(path)
    with TraceStore(path) as store:
        old = store.get("old-run")
        await agent_loop(store, '{"city": "Paris"}')
        new = store.get("run-call")
    assert old is not None and old.query.output == "an old answer"
    assert old.query.tool_calls == [] and old.query.advice is None
    assert old.calls[0].tool_calls == []
    assert new is not None and new.query.tool_calls[0].name == "get_weather"
    db = sqlite3.connect(path)
    try:
        applied = [r[0] for r in db.execute("SELECT name FROM _moakit_migrations ORDER BY rowid")]
    finally:
        db.close()
    assert applied == [name for name, _ in MIGRATIONS]


def invoke(*args: str) -> str:
    # Wide: a long line would wrap, and the test looks for it whole.
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False, env={"COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    return result.output


async def test_trace_show_prints_tool_calls_results_and_advice(tmp_path: Path) -> None:
    arguments = json.dumps({"city": HOSTILE_CITY})
    db = tmp_path / "cli.db"
    with TraceStore(db) as store:
        await agent_loop(store, arguments)
    shown = invoke("trace", "show", "run-call", "--db", str(db))
    # Printed literally: Rich markup in the arguments is shown, not applied.
    assert f"tool call: get_weather({arguments})" in shown
    assert "advice: fresh" in shown
    shown = invoke("trace", "show", "run-answer", "--db", str(db))
    assert "advice: reused (written by run run-call)" in shown
    assert "tool result for call_1: 18 C and sunny" in shown
    assert f"tool call: get_weather({arguments})" in shown  # the assistant turn of the input
    assert "None" not in shown  # an assistant message with only calls has no text to print


async def test_otel_export_carries_tool_calls(tmp_path: Path) -> None:
    arguments = '{"city": "Paris"}'
    spans: dict[bool, list[dict[str, Any]]] = {}
    roots: dict[bool, list[dict[str, Any]]] = {}
    for include in (True, False):
        exporter = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        with TraceStore(tmp_path / f"otel-{include}.db") as store:
            stack = tool_stack(calls(arguments), "Sunny.")
            sink = OtelSink(provider, include_prompts=include)
            async with stack:
                recorder = TraceRecorder(store, sink, stack=stack)
                await traced_run(stack, ChatRequest(messages=ASK, tools=(WEATHER,)), recorder)
                await traced_run(
                    stack,
                    ChatRequest(messages=agent_second_turn(arguments), tools=(WEATHER,)),
                    recorder,
                )
        finished = exporter.get_finished_spans()
        spans[include] = [dict(s.attributes or {}) for s in finished if s.name == "aggregator agg"]
        roots[include] = [dict(s.attributes or {}) for s in finished if s.name == "moa tools-trace"]
    first, second = spans[True]
    out = "llm.output_messages.0.message.tool_calls.0.tool_call"
    assert first[f"{out}.id"] == "call_1"
    assert first[f"{out}.function.name"] == "get_weather"
    assert first[f"{out}.function.arguments"] == arguments
    assert first["llm.output_messages.0.message.role"] == "assistant"
    assert json.loads(first["llm.tools.0.tool.json_schema"]) == WEATHER.to_openai()
    # The second call's input: the assistant's call, then the tool's result for it.
    messages = [
        k for k in second if k.startswith("llm.input_messages.") and k.endswith(".message.role")
    ]
    roles = [second[f"llm.input_messages.{i}.message.role"] for i in range(len(messages))]
    assert roles[-2:] == ["assistant", "tool"]
    i = len(roles) - 2
    call = f"llm.input_messages.{i}.message.tool_calls.0.tool_call"
    assert second[f"{call}.function.name"] == "get_weather"
    assert second[f"{call}.function.arguments"] == arguments
    assert f"llm.input_messages.{i}.message.content" not in second  # no text, not "None"
    assert second[f"llm.input_messages.{i + 1}.message.tool_call_id"] == "call_1"
    assert second[f"llm.input_messages.{i + 1}.message.content"] == "18 C and sunny"
    # The queries: the final calls' names and the advice state.
    first_query, second_query = roots[True]
    assert list(first_query["moakit.tool_calls"]) == ["get_weather"]
    assert first_query["moakit.advice"] == "fresh"
    assert second_query["moakit.advice"] == "reused"
    assert second_query["moakit.advice_from"] == first_query["moakit.run_id"]
    # Without prompts: the call's name and id, never its arguments.
    first, second = spans[False]
    assert first[f"{out}.function.name"] == "get_weather"
    assert f"{out}.function.arguments" not in first
    assert "Paris" not in json.dumps(first) + json.dumps(second)
