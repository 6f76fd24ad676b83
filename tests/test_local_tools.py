"""The embedded model (Qwen2.5-Coder-0.5B, for real) answers with tool calls: rendered through its
own chat template, held to each tool's schema by a grammar, streamed as whole calls."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import jsonschema
import pytest

from moakit.messages import ChatRequest, Chunk, ForceTool, Message, ToolCall, ToolSpec
from moakit.models.local import LocalModel
from moakit.models.local.runtime import shared_runtime
from tool_schemas import CLOCK, WEATHER

pytestmark = pytest.mark.embedded

TOOLS = (
    ToolSpec("get_weather", "Current weather in a city", WEATHER),
    ToolSpec("get_time", "Current time in a timezone", CLOCK),
)
SCHEMAS = {t.name: t.parameters for t in TOOLS}
PARIS = "What's the weather in Paris, in celsius?"


def model() -> LocalModel:
    return LocalModel("qwen2.5-coder-0.5b", {"n_ctx": 2048, "n_seq_max": 2})


def ask(question: str, **kw: Any) -> ChatRequest:
    kw.setdefault("temperature", 0.0)
    kw.setdefault("max_tokens", 64)
    return ChatRequest([Message.user(question)], tools=TOOLS, **kw)


async def chunks_of(request: ChatRequest, m: LocalModel | None = None) -> list[Chunk]:
    return [chunk async for chunk in (m or model()).stream(request)]


def calls_in(chunks: list[Chunk]) -> list[ToolCall]:
    return [call for chunk in chunks for call in chunk.tool_calls]


def assert_valid(call: ToolCall) -> None:
    assert call.name in SCHEMAS, call
    assert call.id.startswith("call_")
    jsonschema.validate(json.loads(call.arguments), SCHEMAS[call.name])


async def test_two_tools_the_right_one_is_called_with_schema_valid_arguments() -> None:
    chunks = await chunks_of(ask(PARIS))  # tool_choice "auto"
    calls = calls_in(chunks)
    assert calls and calls[0].name == "get_weather", chunks
    for call in calls:
        assert_valid(call)
    assert json.loads(calls[0].arguments)["city"] == "Paris"
    assert chunks[-1].finish_reason == "tool_calls"
    # A call is handed over whole; none of its text ever streams as answer text.
    assert "".join(c.text for c in chunks) == ""


async def test_auto_leaves_an_answer_in_words_alone() -> None:
    chunks = await chunks_of(ask("Write a haiku about rain.", max_tokens=16))
    assert not calls_in(chunks)
    assert "".join(c.text for c in chunks).strip()
    assert chunks[-1].finish_reason in {"stop", "length"}


async def test_required_calls_a_tool_even_for_small_talk() -> None:
    chunks = await chunks_of(ask("Hello! How are you?", tool_choice="required"))
    calls = calls_in(chunks)
    assert calls
    for call in calls:
        assert_valid(call)
    assert chunks[-1].finish_reason == "tool_calls"


async def test_a_forced_tool_is_the_one_called_once() -> None:
    chunks = await chunks_of(ask(PARIS, tool_choice=ForceTool("get_time")))
    (call,) = calls_in(chunks)
    assert call.name == "get_time"
    assert_valid(call)


async def test_parallel_calls_and_one_call_only_when_they_are_off() -> None:
    question = "What's the weather in Paris in celsius, and what time is it in Tokyo?"
    m = model()
    both = calls_in(await chunks_of(ask(question, tool_choice="required", max_tokens=80), m))
    assert [c.name for c in both] == ["get_weather", "get_time"]
    for call in both:
        assert_valid(call)
    one = await chunks_of(ask(question, tool_choice="required", parallel_tool_calls=False), m)
    assert len(calls_in(one)) == 1


async def test_a_tool_call_and_its_result_are_rendered_then_answered_in_words() -> None:
    m = model()
    conversation = [
        Message.system(
            "You are a weather assistant. After a tool response, answer the user's question "
            "in one plain sentence."
        ),
        Message.user(PARIS),
        Message.assistant(
            tool_calls=[ToolCall("call_1", "get_weather", '{"city": "Paris", "unit": "celsius"}')]
        ),
        Message.tool("call_1", '{"temperature": 21, "sky": "sunny"}'),
    ]
    runtime = await asyncio.to_thread(shared_runtime, m.key)
    prompt = runtime.template.render(conversation, TOOLS)
    text = runtime.model.detokenize(prompt.tokens, special=True).decode()
    # Qwen's template wraps the call and the result; the arguments are an object, not a string.
    assert (
        '<|im_start|>assistant\n<tool_call>\n{"name": "get_weather", "arguments": '
        '{"city": "Paris", "unit": "celsius"}}\n</tool_call><|im_end|>' in text
    )
    assert (
        '<|im_start|>user\n<tool_response>\n{"temperature": 21, "sky": "sunny"}\n'
        "</tool_response><|im_end|>" in text
    )
    assert '<tools>\n{"type": "function", "function": {"name": "get_weather"' in text
    # The second step, tools no longer offered ("none": the 0.5B model, offered them, calls
    # again rather than answer), is an answer in words that uses the result.
    chunks = await chunks_of(
        ChatRequest(conversation, tools=TOOLS, tool_choice="none", temperature=0.0, max_tokens=40),
        m,
    )
    answer = "".join(c.text for c in chunks)
    assert not calls_in(chunks)
    assert "21" in answer and "<tool_call>" not in answer


async def test_a_batch_mixing_grammar_and_free_sequences_gives_each_its_own_answer() -> None:
    m = model()
    plain = ChatRequest([Message.user("Name three colours.")], temperature=0.0, max_tokens=16)
    alone = "".join(c.text for c in await chunks_of(plain, m))
    stats = shared_runtime(m.key).scheduler.stats
    stats.max_live = 0
    free, tools = await asyncio.gather(
        chunks_of(plain, m), chunks_of(ask(PARIS, tool_choice="required"), m)
    )
    assert stats.max_live == 2  # decoded side by side in one batch
    # The grammar holds only its own sequence: the free one is bit for bit its answer alone.
    assert "".join(c.text for c in free) == alone
    assert not calls_in(free)
    (call,) = calls_in(tools)
    assert call.name == "get_weather"
    assert_valid(call)


async def test_a_seeded_request_names_its_calls_the_same_way_twice() -> None:
    m = model()
    first = calls_in(await chunks_of(ask(PARIS, tool_choice="required", seed=7), m))
    again = calls_in(await chunks_of(ask(PARIS, tool_choice="required", seed=7), m))
    other = calls_in(await chunks_of(ask(PARIS, tool_choice="required", seed=8), m))
    assert [c.id for c in first] == [c.id for c in again]
    assert {c.id for c in first}.isdisjoint(c.id for c in other)


async def test_a_model_whose_template_knows_no_tools_gets_them_as_text_and_still_calls() -> None:
    small = LocalModel("smollm2-135m", {"n_ctx": 2048, "n_seq_max": 1})
    runtime = await asyncio.to_thread(shared_runtime, small.key)
    assert not runtime.template.native_tools
    conversation = [
        Message.user(PARIS),
        Message.assistant(tool_calls=[ToolCall("c1", "get_weather", '{"city": "Paris"}')]),
        Message.tool("c1", "21 C"),
    ]
    prompt = runtime.template.render(conversation, TOOLS)
    text = runtime.model.detokenize(prompt.tokens, special=True).decode()
    assert "<tools>" in text and '"name": "get_time"' in text
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}' in text
    assert "<tool_response>\n21 C\n</tool_response>" in text
    (call,) = calls_in(await chunks_of(ask(PARIS, tool_choice=ForceTool("get_weather")), small))
    assert_valid(call)
