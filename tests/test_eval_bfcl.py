"""BFCL as a `moa eval` dataset: real items of the bfcl-eval package, hand-written right and
wrong tool calls scored by the package's own checker, and a whole run on test doubles (the
tools reach the answering model, the calls reach the records and the scorer)."""

from __future__ import annotations

import asyncio
import json
import re
import sqlite3
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from moakit.config import MemberSpec
from moakit.engine.tool_calls import check_tool_specs
from moakit.errors import ConfigError
from moakit.eval import bfcl
from moakit.eval.cache import TALLY, CachedModel, ResponseCache, Tally
from moakit.eval.datasets import Item, load_dataset
from moakit.eval.kinds import build_systems
from moakit.eval.results import ResultsDir
from moakit.eval.scorers import build_scorer
from moakit.eval.scorers.base import Score
from moakit.eval.session import EvalSession, EvalSettings
from moakit.messages import ChatRequest, Completion, Message, ToolCall
from moakit.models.base import Chunk, Model
from moakit.models.profile import ModelProfile
from moakit.models.provider import ResourcePool
from moakit.testing.models import FunctionModel
from moakit.testing.plugins import register_provider

pytest.importorskip("bfcl_eval")


def _item(dataset: str, item_id: str) -> Item:
    items = {i.id: i for i in load_dataset(dataset).items}
    return items[item_id]


def _call(name: str, **arguments: Any) -> ToolCall:
    return ToolCall(f"call_{name}", name, json.dumps(arguments))


def _score(item: Item, calls: list[ToolCall], text: str = "") -> Score:
    scorer = build_scorer("bfcl")
    return asyncio.run(scorer.score_calls(item, [text], calls))


# -- the items and their tools -----------------------------------------------------------


def test_items_are_bfcls_own_with_tools_in_openais_shape() -> None:
    item = _item("bfcl-multiple", "multiple_0")
    assert item.turns[0].startswith("Can I find the dimensions and properties of a triangle")
    names = [tool.name for tool in item.tools]
    # BFCL's OpenAI handler rewrites '.' (not allowed in OpenAI's names) to '_'.
    assert "triangle_properties_get" in names and not any("." in n for n in names)
    params = item.tools[0].parameters
    assert params["type"] == "object"  # BFCL's "dict"
    assert item.tools[0].description and "Python 3 syntax" in item.tools[0].description
    # The checker reads the package's function docs without that hint, as its runner does.
    assert "Python 3" not in item.meta["functions"][0]["description"]
    assert item.meta["functions"][0]["name"] == "triangle_properties.get"


def test_bfcl_types_become_json_schema() -> None:
    """float -> number, tuple -> array, dict -> object, any -> string: BFCL's mapping."""
    seen: dict[str, set[str]] = {}

    def walk(schema: Any, original: Any) -> None:
        for key, prop in (original.get("properties") or {}).items():
            mine = schema["properties"][key]
            seen.setdefault(prop["type"], set()).add(mine["type"])
            if prop["type"] == "dict" and "properties" in prop:
                walk(mine, prop)

    for dataset in ("bfcl-simple", "bfcl-parallel-multiple"):
        for item in load_dataset(dataset).items:
            for tool, doc in zip(item.tools, item.meta["functions"], strict=True):
                walk(tool.parameters, doc["parameters"])
    assert seen["float"] == {"number"}
    assert seen["dict"] == {"object"}
    assert seen["tuple"] == {"array"}
    assert seen["any"] == {"string"}


async def test_every_items_tools_pass_the_engines_schema_check() -> None:
    """A tool the engine refused would make the item an error for every system."""
    count = 0
    for dataset in bfcl.CATEGORIES:
        for item in load_dataset(dataset).items:
            await check_tool_specs(item.tools)
            count += 1
    assert count == 400 + 200 + 200 + 200 + 240


def test_without_the_package_the_error_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "bfcl_eval.constants", None)  # import fails
    with pytest.raises(ConfigError, match="--no-deps"):
        bfcl.package.__wrapped__()


# -- the checker, on hand-written calls --------------------------------------------------


def test_simple_right_and_wrong_calls() -> None:
    item = _item("bfcl-simple", "simple_python_0")  # base 10, height 5, unit optional
    assert _score(item, [_call("calculate_triangle_area", base=10, height=5)]).correct
    with_unit = _call("calculate_triangle_area", base=10, height=5, unit="units")
    assert _score(item, [with_unit]).correct
    wrong = _score(item, [_call("calculate_triangle_area", base=9, height=5)])
    assert wrong.correct is False and wrong.value == 0.0
    assert str(wrong.detail["error_type"]).startswith("value_error")
    missing = _score(item, [_call("calculate_triangle_area", base=10)])
    assert missing.detail["error_type"] == "simple_function_checker:missing_required"
    as_text = _score(item, [], text="The area is 25.")
    assert as_text.correct is False and build_scorer("bfcl").unparsed(as_text)
    twice = [_call("calculate_triangle_area", base=10, height=5)] * 2
    assert _score(item, twice).correct is False


def test_multiple_needs_the_right_function_under_its_rewritten_name() -> None:
    item = _item("bfcl-multiple", "multiple_0")
    right = _call("triangle_properties_get", side1=5, side2=4, side3=3)
    assert _score(item, [right]).correct
    assert (
        _score(item, [_call("triangle_properties_get", side1=5, side2=4, side3=4)]).correct is False
    )
    other = next(t.name for t in item.tools if t.name != "triangle_properties_get")
    assert _score(item, [_call(other, side1=5, side2=4, side3=3)]).correct is False


def test_parallel_calls_match_in_any_order_and_all_are_needed() -> None:
    item = _item("bfcl-parallel", "parallel_0")  # Taylor Swift 20 min, Maroon 5 15 min
    swift = _call("spotify_play", artist="Taylor Swift", duration=20)
    maroon = _call("spotify_play", artist="Maroon 5", duration=15)
    assert _score(item, [swift, maroon]).correct
    assert _score(item, [maroon, swift]).correct
    assert _score(item, [swift]).correct is False
    swapped = _call("spotify_play", artist="Maroon 5", duration=20)
    assert _score(item, [swift, swapped]).correct is False


def test_parallel_multiple() -> None:
    item = _item("bfcl-parallel-multiple", "parallel_multiple_0")
    total = _call(
        "math_toolkit_sum_of_multiples", lower_limit=1, upper_limit=1000, multiples=[3, 5]
    )
    primes = _call("math_toolkit_product_of_primes", count=5)
    assert _score(item, [primes, total]).correct
    assert _score(item, [total]).correct is False
    assert _score(item, [total, _call("math_toolkit_product_of_primes", count=6)]).correct is False


def test_irrelevance_is_right_only_without_a_call() -> None:
    item = _item("bfcl-irrelevance", "irrelevance_0")  # a triangle's area; only BMI on offer
    assert _score(item, [], text="I cannot compute that with the tools I have.").correct
    called = _score(item, [_call("determine_body_mass_index", weight=10, height=5)])
    assert called.correct is False
    assert called.detail["error_type"] == "irrelevance_error:decoder_success"


def test_arguments_that_are_not_json_are_a_decoder_failure() -> None:
    bad = ToolCall("c", "calculate_triangle_area", "{base: 10")
    score = _score(_item("bfcl-simple", "simple_python_0"), [bad])
    assert score.correct is False and score.detail["error_type"] == "ast_decoder:decoder_failed"
    # BFCL's relevance rule: output that does not decode to a call is no call.
    assert _score(_item("bfcl-irrelevance", "irrelevance_0"), [bad]).correct


# -- the eval cache and tool calls --------------------------------------------------------


class _Caller(Model):
    name = "caller"
    profile = ModelProfile(tools=True)

    def __init__(self) -> None:
        self.calls = 0

    async def stream(self, request: ChatRequest) -> AsyncIterator[Chunk]:
        self.calls += 1
        yield Chunk(text="Let me compute it.")
        yield Chunk(finish_reason="tool_calls", tool_calls=(_call("f", x=1),))


async def test_an_answer_with_tool_calls_is_served_from_the_cache_as_the_same_calls() -> None:
    """A stored tool-call answer comes back as calls (same ids, so the follow-up round's
    request is identical too), never flattened into a plain text answer."""
    inner = _Caller()
    cached = CachedModel(inner, ResponseCache(None), {"model": "caller"})
    request = ChatRequest(messages=[Message.user("x")])
    tally = Tally()
    token = TALLY.set(tally)
    try:
        for _ in range(2):
            chunks = [c async for c in cached.stream(request)]
            assert [c for chunk in chunks for c in chunk.tool_calls] == [_call("f", x=1)]
            assert "".join(c.text for c in chunks) == "Let me compute it."
            assert chunks[-1].finish_reason == "tool_calls"
    finally:
        TALLY.reset(token)
    assert inner.calls == 1 and tally.cache_hits == 1
    assert len(tally.first_token_s) == 1  # the served answer was not timed as a call


def test_a_cache_file_from_before_tool_calls_were_stored_keeps_its_rows(tmp_path: Path) -> None:
    """Migration 2 adds the tool_calls column to an old file in place; a second opener (another
    process, concurrently) finds it there."""
    path = tmp_path / "cache.sqlite"
    old = sqlite3.connect(path)
    old.execute(
        "CREATE TABLE responses (key TEXT PRIMARY KEY, model TEXT NOT NULL, text TEXT NOT NULL, "
        "finish_reason TEXT, prompt_tokens INTEGER NOT NULL, completion_tokens INTEGER NOT NULL, "
        "latency_s REAL NOT NULL, created REAL NOT NULL)"
    )
    old.execute("INSERT INTO responses VALUES ('k', 'm', 'old answer', 'stop', 3, 2, 0.1, 0.0)")
    old.commit()
    old.close()
    first, second = ResponseCache(path), ResponseCache(path)
    try:
        hit = second.get("k")
        assert hit is not None and hit.text == "old answer" and hit.tool_calls == ()
        calls = (_call("f", x=1), _call("g", y="two"))
        first.put("c", "m", Completion(text="", finish_reason="tool_calls", tool_calls=calls), 0.2)
        stored = second.get("c")
        assert stored is not None and stored.tool_calls == calls and stored.text == ""
    finally:
        first.close()
        second.close()


async def test_an_answer_made_only_of_tool_calls_has_a_first_token() -> None:
    class OnlyCalls(_Caller):
        async def stream(self, request: ChatRequest) -> AsyncIterator[Chunk]:
            yield Chunk(finish_reason="tool_calls", tool_calls=(_call("f", x=1),))

    cached = CachedModel(OnlyCalls(), ResponseCache(None), {"model": "caller"})
    tally = Tally()
    token = TALLY.set(tally)
    try:
        _ = [c async for c in cached.stream(ChatRequest(messages=[Message.user("x")]))]
    finally:
        TALLY.reset(token)
    assert len(tally.first_token_s) == 1


# -- a whole run on test doubles ----------------------------------------------------------

# What the fake acting model calls, by question (two right answers, one wrong).
_ANSWERS = {
    "simple_python_0": [_call("calculate_triangle_area", base=10, height=5)],
    "simple_python_1": [_call("math_factorial", number=5)],
    "simple_python_2": [_call("math_hypot", x=4, y=6)],  # wrong: the question says 4 and 5
}
_SEEN: list[ChatRequest] = []


def _fake(request: ChatRequest) -> str | Completion:
    _SEEN.append(request)
    question = next(m.text for m in request.messages if m.role == "user")
    if not request.tools:  # a proposer: advice in text
        return f"Advice: call the tool that answers {question[:20]}"
    item_id = next(i.id for i in load_dataset("bfcl-simple", limit=3).items if i.prompt == question)
    return Completion(text="", tool_calls=tuple(_ANSWERS[item_id]))


def _build(spec: MemberSpec, pool: ResourcePool) -> Model:
    return FunctionModel(_fake, name=spec.model, tools=True)


register_provider("bfclfake", _build)

STACK = """
name = "bfclfake3"
[defaults]
provider = "bfclfake"
max_tokens = 64
[[layers]]
members = [{ model = "m", n = 2, seed = 1 }]
[aggregator]
model = "m"
seed = 100
"""


def test_a_run_sends_the_tools_and_scores_the_calls(tmp_path: Path) -> None:
    stack = tmp_path / "bfclfake3.toml"
    stack.write_text(STACK)
    specs = [f"single:{stack}", f"moa:{stack}", f"self-moa:{stack}"]
    _SEEN.clear()
    settings = EvalSettings(
        out_dir=tmp_path / "out", dataset="bfcl-simple", limit=3, systems=specs, plots=False
    )
    session = EvalSession(settings)
    asyncio.run(session.run())
    session.write_report()
    results = ResultsDir(tmp_path / "out", warn=lambda message: None)
    for system in build_systems(specs):
        records = results.records(system.info())
        assert {k: r.right for k, r in records.items()} == {
            "simple_python_0": True,
            "simple_python_1": True,
            "simple_python_2": False,
        }, system.name
        assert records["simple_python_0"].tool_calls[0].name == "calculate_triangle_area"
        if system.kind != "single":  # the proposers advised; nothing scored them
            assert all(m.correct is None for m in records["simple_python_0"].layers[0])
    offered = [r for r in _SEEN if r.tools]
    assert offered and all(t.name == "calculate_triangle_area" for t in offered[0].tools)
    # single: 3 acting calls; moa: 3 aggregators. Self-MoA's 3 aggregators send MoA's requests
    # (the fake advises alike), so the cache answers them, calls and all (scored right above).
    assert len(offered) == 6
    assert len([r for r in _SEEN if not r.tools]) == 2 * 3 * 2
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    rows = {row["name"]: row for row in summary["systems"]}
    assert all(abs(row["accuracy"] - 2 / 3) < 1e-9 for row in rows.values())
    assert {c["test"] for c in summary["comparisons"]} == {"mcnemar-exact"}


def test_a_model_that_cannot_call_tools_is_an_error_not_a_wrong_answer(tmp_path: Path) -> None:
    register_provider("bfclmute", lambda spec, pool: FunctionModel(lambda r: "text", name="x"))
    stack = tmp_path / "mute.toml"
    stack.write_text(re.sub("bfclfake", "bfclmute", STACK))
    settings = EvalSettings(
        out_dir=tmp_path / "out",
        dataset="bfcl-simple",
        limit=1,
        systems=[f"single:{stack}"],
        plots=False,
    )
    asyncio.run(EvalSession(settings).run())
    results = ResultsDir(tmp_path / "out", warn=lambda message: None)
    (system,) = build_systems([f"single:{stack}"])
    record = results.records(system.info())["simple_python_0"]
    assert record.error and "cannot call tools" in record.error
