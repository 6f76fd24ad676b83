"""The tool-call grammar: what it is made of, and (through llama.cpp's own grammar engine, on the
embedded model's vocabulary, without decoding anything) which answers it lets through."""

from __future__ import annotations

import ctypes
import json
from collections.abc import Iterator
from typing import Any

import pytest

from moakit.errors import ConfigError
from moakit.models.local.tool_grammar import tool_call_grammar
from tool_schemas import CLOCK, WEATHER

TOOLS = [("get_weather", WEATHER), ("get_time", CLOCK)]


def call(name: str, arguments: dict[str, Any]) -> str:
    return json.dumps({"name": name, "arguments": arguments})


def tagged(*calls: str) -> str:
    return "\n".join(f"<tool_call>\n{c}\n</tool_call>" for c in calls)


PARIS = call("get_weather", {"city": "Paris", "unit": "celsius"})
TOKYO = call("get_time", {"timezone": "Asia/Tokyo"})


# -- how it is built (no model needed) ---------------------------------------------------------


def rules(gbnf: str) -> dict[str, str]:
    return dict(line.split(" ::= ", 1) for line in gbnf.splitlines())


def with_item(item: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {"item": {"$ref": "#/$defs/Item"}},
        "required": ["item"],
        "additionalProperties": False,
        "$defs": {"Item": item},
    }


# Two tools that both define $defs/Item, differently: each call must use its own.
NUMBER = with_item({"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]})
WORD = with_item({"type": "object", "properties": {"w": {"type": "string"}}, "required": ["w"]})


def test_each_tool_s_rules_live_under_their_own_prefix() -> None:
    grammar = rules(tool_call_grammar([("count", NUMBER), ("spell", WORD)]))
    assert grammar["t0-call"].startswith('"{\\"name\\": \\"count\\"')
    assert grammar["t1-call"].startswith('"{\\"name\\": \\"spell\\"')
    assert "t0-Item-n-kv" in grammar["t0-Item"] and "t1-Item-w-kv" in grammar["t1-Item"]
    for name, body in grammar.items():
        if name.startswith("t0-"):
            assert "t1-" not in body
        if name.startswith("t1-"):
            assert "t0-" not in body


def test_calls_only_unless_text_is_allowed() -> None:
    assert "text" not in rules(tool_call_grammar(TOOLS))["root"]
    assert "text" in rules(tool_call_grammar(TOOLS, allow_text=True))["root"]
    single = rules(tool_call_grammar(TOOLS, parallel=False))["root"]
    assert "*" not in single


def test_a_remote_ref_in_a_tool_schema_is_refused() -> None:
    schema = {"type": "object", "properties": {"x": {"$ref": "https://example.com/s.json"}}}
    with pytest.raises(ConfigError, match="only local"):
        tool_call_grammar([("fetchy", schema)])


def test_a_schema_the_converter_cannot_enforce_names_the_tool() -> None:
    with pytest.raises(ConfigError, match="'odd'"):
        tool_call_grammar([("odd", {"type": "no-such-type"})])


# -- what it lets through (llama.cpp's grammar engine on the real vocabulary) ------------------


@pytest.fixture(scope="module")
def vocab() -> Iterator[Any]:
    from llama_cpp import Llama

    from moakit.models.local.weights import resolve_model_path

    llama = Llama(str(resolve_model_path("qwen2.5-coder-0.5b")), vocab_only=True, verbose=False)
    yield llama
    llama.close()


def accepts(llama: Any, gbnf: str, text: str) -> bool:
    """Whether the grammar lets ``text`` through token by token and then lets the answer end."""
    import llama_cpp

    vocab = llama._model.vocab
    sampler = llama_cpp.llama_sampler_init_grammar(vocab, gbnf.encode(), b"root")
    assert sampler, "the grammar does not compile"
    try:
        tokens = llama.tokenize(text.encode(), add_bos=False, special=True)
        for token in [*tokens, llama.token_eos()]:
            data = (llama_cpp.llama_token_data * 1)(llama_cpp.llama_token_data(token, 0.0, 0.0))
            array = llama_cpp.llama_token_data_array(
                data=ctypes.cast(data, llama_cpp.llama_token_data_p),
                size=1,
                selected=-1,
                sorted=False,
            )
            llama_cpp.llama_sampler_apply(sampler, ctypes.byref(array))
            if data[0].logit == float("-inf"):
                return False
            if token != llama.token_eos():
                llama_cpp.llama_sampler_accept(sampler, token)
        return True
    finally:
        llama_cpp.llama_sampler_free(sampler)


@pytest.mark.embedded
def test_calls_to_either_tool_pass_tagged_or_bare(vocab: Any) -> None:
    gbnf = tool_call_grammar(TOOLS)
    assert accepts(vocab, gbnf, tagged(PARIS))
    assert accepts(vocab, gbnf, tagged(TOKYO))
    assert accepts(vocab, gbnf, tagged(PARIS, TOKYO))  # parallel
    assert accepts(vocab, gbnf, PARIS)
    assert accepts(vocab, gbnf, PARIS + "\n" + TOKYO)


@pytest.mark.embedded
def test_arguments_must_fit_the_named_tool_s_schema(vocab: Any) -> None:
    gbnf = tool_call_grammar(TOOLS)
    # Another tool's arguments, a value outside the enum, a missing required field, an unknown
    # field (additionalProperties false), an unknown tool, a string where an object belongs.
    for bad in (
        call("get_weather", {"timezone": "Asia/Tokyo"}),
        call("get_weather", {"city": "Paris", "unit": "kelvin"}),
        call("get_weather", {"city": "Paris"}),
        call("get_time", {"timezone": "UTC", "extra": 1}),
        call("get_date", {"timezone": "UTC"}),
        json.dumps({"name": "get_time", "arguments": json.dumps({"timezone": "UTC"})}),
    ):
        assert not accepts(vocab, gbnf, tagged(bad)), bad
        assert not accepts(vocab, gbnf, bad), bad


@pytest.mark.embedded
def test_tools_with_same_named_definitions_keep_their_own(vocab: Any) -> None:
    gbnf = tool_call_grammar([("count", NUMBER), ("spell", WORD)])
    assert accepts(vocab, gbnf, call("count", {"item": {"n": 3}}))
    assert accepts(vocab, gbnf, call("spell", {"item": {"w": "three"}}))
    assert not accepts(vocab, gbnf, call("count", {"item": {"w": "three"}}))
    assert not accepts(vocab, gbnf, call("spell", {"item": {"n": 3}}))


@pytest.mark.embedded
def test_one_call_only_when_parallel_calls_are_off(vocab: Any) -> None:
    gbnf = tool_call_grammar(TOOLS, parallel=False)
    assert accepts(vocab, gbnf, tagged(PARIS))
    assert not accepts(vocab, gbnf, tagged(PARIS, TOKYO))


@pytest.mark.embedded
def test_text_is_allowed_only_when_it_does_not_start_like_a_call(vocab: Any) -> None:
    calls_only = tool_call_grammar(TOOLS)
    auto = tool_call_grammar(TOOLS, allow_text=True)
    prose = "Rain taps the window,\nsoft and slow."
    assert not accepts(vocab, calls_only, prose)
    assert accepts(vocab, auto, prose)
    assert accepts(vocab, auto, tagged(PARIS))
    assert accepts(vocab, auto, "Some <b>bold</b>, `code` and ```python\nx = 1\n```")
    assert accepts(vocab, auto, "Here:\n```json\n{}\n```")  # a fence later on is text
    assert accepts(vocab, auto, "`x` is a name")  # inline code is not a fence
    assert accepts(vocab, auto, "``")  # a text may be a cut-off start, ending there
    # What would start a call (or the small model's attempt at one) cannot begin free text.
    for start in (
        '{"name": "oops"}',
        "<tool_call>\nnot json\n</tool_call>",
        "<tools>\n[]",
        "```json\n{}\n```",
        "```xml\n{}\n```",
    ):
        assert not accepts(vocab, auto, start), start
