"""Reading an embedded model's answer into streamed text and whole tool calls (no model)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from moakit.errors import ConfigError, ModelCallError
from moakit.messages import ChatRequest, ForceTool, Message, ToolCall, ToolSpec
from moakit.models.local.chat_messages import template_messages, with_tools_block
from moakit.models.local.tool_calls import ReaderMode, ToolCallReader
from moakit.models.local.tools import ToolPlan, call_ids, plan_tools

PARIS = '{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}'
TOKYO = '{"name": "get_time", "arguments": {"timezone": "Asia/Tokyo"}}'


def tagged(*calls: str) -> str:
    return "\n".join(f"<tool_call>\n{c}\n</tool_call>" for c in calls)


def read(
    mode: ReaderMode, pieces: list[str], truncated: bool = False
) -> tuple[list[str], list[list[ToolCall]]]:
    """Feed ``pieces``; the text released and the calls completed after each, then at the end."""
    reader = ToolCallReader(mode, lambda n: f"call_{n}")
    texts, calls = [], []
    for piece in pieces:
        text, done = reader.feed(piece)
        texts.append(text)
        calls.append(done)
    text, done = reader.finish(truncated)
    return [*texts, text], [*calls, done]


def chars(text: str) -> list[str]:
    return list(text)


def test_each_call_comes_whole_once_closed_and_its_text_never_streams() -> None:
    answer = tagged(PARIS, TOKYO)
    texts, calls = read("calls", chars(answer))
    assert "".join(texts) == ""
    flat = [c for done in calls for c in done]
    assert [(c.id, c.name) for c in flat] == [("call_0", "get_weather"), ("call_1", "get_time")]
    assert json.loads(flat[0].arguments) == {"city": "Paris", "unit": "celsius"}
    # The first call is handed over as soon as its closing tag arrives, not at the end.
    first_close = answer.index("</tool_call>") + len("</tool_call>") - 1
    assert calls[first_close] == [flat[0]]


def test_bare_call_objects_are_calls_too() -> None:
    texts, calls = read("auto", chars(PARIS + "\n" + TOKYO))
    assert "".join(texts) == ""
    assert [c.name for done in calls for c in done] == ["get_weather", "get_time"]


def test_auto_text_streams_as_soon_as_it_cannot_be_a_call() -> None:
    texts, calls = read("auto", ["<", "b>bold</b>", " rest"])
    assert texts == ["", "<b>bold</b>", " rest", ""]
    assert not any(calls)
    texts, _ = read("auto", ["Sunny", " today"])
    assert texts == ["Sunny", " today", ""]


def test_auto_answer_that_starts_with_the_tag_is_calls() -> None:
    texts, calls = read("auto", ["<tool", "_call>\n", PARIS, "\n</tool_call>"])
    assert "".join(texts) == ""
    assert [c.name for done in calls for c in done] == ["get_weather"]


def test_text_mode_passes_everything_through() -> None:
    texts, calls = read("text", [tagged(PARIS)])
    assert "".join(texts) == tagged(PARIS)
    assert not any(calls)


def test_a_call_cut_off_by_max_tokens_is_dropped_the_complete_ones_kept() -> None:
    answer = tagged(PARIS, TOKYO)
    _, calls = read("calls", [answer[:-30]], truncated=True)
    assert [c.name for done in calls for c in done] == ["get_weather"]


def test_an_unreadable_call_is_an_error_not_text() -> None:
    with pytest.raises(ModelCallError, match="unreadable"):
        read("calls", ["<tool_call>\nnot json\n</tool_call>"])
    with pytest.raises(ModelCallError, match="unreadable"):
        read("calls", ['{"name": "x", "arguments": '])  # unfinished, yet not cut by length
    with pytest.raises(ModelCallError, match="unreadable"):
        read("calls", ['{"name": "x", "arguments": "a string"}'])


def test_arguments_are_strict_json_even_with_raw_control_characters() -> None:
    raw = '{"name": "note", "arguments": {"text": "line one\nline two"}}'
    _, calls = read("calls", [raw])
    (call,) = calls[0]
    assert json.loads(call.arguments) == {"text": "line one\nline two"}


# -- what a request's tools mean for the embedded model (no model) -----------------------------

SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
TOOLS = (ToolSpec("get_weather", "Weather", SCHEMA), ToolSpec("get_time", "Time", SCHEMA))


def request(**kw: Any) -> ChatRequest:
    return ChatRequest([Message.user("hi")], tools=TOOLS, **kw)


def test_tool_choice_picks_what_is_rendered_constrained_and_read() -> None:
    auto = plan_tools(request())
    assert auto.rendered == TOOLS and auto.mode == "auto" and auto.grammar
    assert "text" in auto.grammar.rsplit("root ::=", 1)[1]
    required = plan_tools(request(tool_choice="required"))
    assert required.mode == "calls" and required.grammar
    assert "text" not in required.grammar.rsplit("root ::=", 1)[1]
    forced = plan_tools(request(tool_choice=ForceTool("get_time")))
    assert forced.rendered == TOOLS and forced.mode == "calls" and forced.grammar
    assert '\\"get_time\\"' in forced.grammar and '\\"get_weather\\"' not in forced.grammar
    assert plan_tools(request(tool_choice="none")) == ToolPlan()
    assert plan_tools(ChatRequest([Message.user("hi")])) == ToolPlan()


def test_requests_the_grammar_cannot_serve_are_refused_naming_the_field() -> None:
    with pytest.raises(ConfigError) as missing:
        plan_tools(request(tool_choice=ForceTool("get_date")))
    assert missing.value.field == "tool_choice"
    with pytest.raises(ConfigError) as both:
        plan_tools(request(response_format={"type": "json_object"}))
    assert both.value.field == "response_format"
    with pytest.raises(ConfigError) as prefill:
        plan_tools(request(prefill="Sure"))
    assert prefill.value.field == "prefill"


def test_call_ids_repeat_with_the_seed_and_prompt_and_differ_otherwise() -> None:
    ids = call_ids(7, [1, 2, 3])
    assert ids(0) == call_ids(7, [1, 2, 3])(0) and ids(0).startswith("call_")
    assert len({ids(0), ids(1), call_ids(8, [1, 2, 3])(0), call_ids(7, [1, 2, 4])(0)}) == 4
    assert call_ids(None, [1])(0) != call_ids(None, [1])(0)


# -- typed messages → template dicts (no model) -----------------------------------------------

CONVERSATION = [
    Message.user("Weather in Paris?"),
    Message.assistant("Checking.", [ToolCall("c1", "get_weather", '{"city": "Paris"}')]),
    Message.tool("c1", "21 C"),
    Message.tool("c2", "sunny"),
]


def test_a_template_that_takes_tools_gets_openai_shaped_calls_with_object_arguments() -> None:
    dicts = template_messages(CONVERSATION, native_tools=True)
    assert dicts[1] == {
        "role": "assistant",
        "content": "Checking.",
        "tool_calls": [
            {
                "id": "c1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": {"city": "Paris"}},
            }
        ],
    }
    assert dicts[2:] == [
        {"role": "tool", "content": "21 C", "tool_call_id": "c1"},
        {"role": "tool", "content": "sunny", "tool_call_id": "c2"},
    ]


def test_a_template_without_tools_gets_the_calls_and_results_written_as_text() -> None:
    dicts = with_tools_block(template_messages(CONVERSATION, native_tools=False), TOOLS)
    assert dicts[0]["role"] == "system" and "<tools>" in dicts[0]["content"]
    assert '"name": "get_time"' in dicts[0]["content"]
    assert dicts[2] == {
        "role": "assistant",
        "content": 'Checking.\n<tool_call>\n{"name": "get_weather", "arguments": '
        '{"city": "Paris"}}\n</tool_call>',
    }
    # Consecutive results are one user turn, as Qwen's template writes them.
    assert dicts[3:] == [
        {
            "role": "user",
            "content": "<tool_response>\n21 C\n</tool_response>\n"
            "<tool_response>\nsunny\n</tool_response>",
        }
    ]
