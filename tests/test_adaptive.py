"""Adaptive compute in the engine: early exit on agreement, cascades, and every decision
visible (``moakit.engine.adaptive``)."""

from __future__ import annotations

from typing import Any

import pytest

from moakit import ConfigError, Stack, parse_config
from moakit.events import Decided, TextDelta
from moakit.messages import ChatRequest
from moakit.testing.models import FunctionModel

ASK = [{"role": "user", "content": "What is 6 x 7?"}]


def fixed(name: str, answer: str) -> FunctionModel:
    return FunctionModel(lambda r: answer, name=name)


def config(layers: list[list[dict[str, Any]]], **adaptive: Any) -> Any:
    return parse_config(
        {
            "layers": [{"members": layer} for layer in layers],
            "aggregator": {"model": "agg"},
            "adaptive": adaptive,
        }
    )


def names(*labels: str, prices: dict[str, float] | None = None) -> list[dict[str, Any]]:
    prices = prices or {}
    return [
        {
            "model": n,
            **({"price_in_per_mtok": 0.0, "price_out_per_mtok": prices[n]} if n in prices else {}),
        }
        for n in labels
    ]


async def test_a_layer_that_agrees_answers_without_the_aggregator_or_later_layers() -> None:
    models = {
        "a": fixed("a", "6 x 7 = 42. #### 42"),
        "b": fixed("b", "The answer is 42."),
        "c": fixed("c", "unused"),
        "agg": fixed("agg", "unused"),
    }
    cfg = config([names("a", "b"), names("c")], early_exit={"rule": "answer"})
    async with Stack(cfg, models=models) as stack:
        events = [e async for e in stack.events(ASK)]
    result = events[-1].result  # type: ignore[attr-defined]
    assert result.final == "6 x 7 = 42. #### 42"  # the first agreeing answer, verbatim
    (decision,) = result.decisions
    assert decision.kind == "early_exit" and decision.layer == 1
    assert decision.skipped == ["c", "aggregator"] and decision.calls_saved == 2
    assert decision.answer_from == "a" and "'42'" in decision.detail
    assert result.aggregators == [] and result.llm_calls == 2
    assert not models["c"].requests and not models["agg"].requests  # type: ignore[attr-defined]
    kinds = [type(e).__name__ for e in events if isinstance(e, Decided | TextDelta)]
    assert kinds == ["Decided", "TextDelta"]


async def test_disagreement_runs_the_whole_stack() -> None:
    models = {"a": fixed("a", "42"), "b": fixed("b", "41"), "agg": fixed("agg", "42 it is")}
    cfg = config([names("a", "b")], early_exit={"rule": "answer"})
    async with Stack(cfg, models=models) as stack:
        result = await stack.run(ASK)
    assert result.final == "42 it is" and result.decisions == []


async def test_a_failed_or_truncated_member_blocks_no_exit_but_never_counts_as_agreeing() -> None:
    models = {
        "a": fixed("a", "42"),
        "b": FunctionModel(lambda r: RuntimeError("down"), name="b"),
        "agg": fixed("agg", "agg says 42"),
    }
    cfg = config([names("a", "b")], early_exit={"rule": "answer", "min_answers": 2})
    async with Stack(cfg, models=models) as stack:
        result = await stack.run(ASK)
    assert result.final == "agg says 42"  # one answer is not an agreement


async def test_similarity_picks_the_medoid() -> None:
    models = {
        "a": fixed("a", "Paris is the capital of France."),
        "b": fixed("b", "The capital of France is Paris."),
        "c": fixed("c", "Paris is the capital city of France."),
        "agg": fixed("agg", "unused"),
    }
    cfg = config([names("a", "b", "c")], early_exit={"rule": "similarity", "threshold": 0.8})
    async with Stack(cfg, models=models) as stack:
        result = await stack.run(ASK)
    (decision,) = result.decisions
    assert decision.kind == "early_exit" and result.final in {
        "Paris is the capital of France.",
        "The capital of France is Paris.",
        "Paris is the capital city of France.",
    }
    strict = config([names("a", "b", "c")], early_exit={"rule": "similarity", "threshold": 1.0})
    async with Stack(strict, models=models) as stack:
        assert (await stack.run(ASK)).decisions == []


async def test_a_cascade_asks_the_cheapest_first_and_stops_when_they_agree() -> None:
    models = {n: fixed(n, "#### 42") for n in ("dear", "cheap1", "cheap2", "agg")}
    layer = names("dear", "cheap1", "cheap2", prices={"dear": 10.0, "cheap1": 0.1, "cheap2": 0.2})
    cfg = config([layer], early_exit={"rule": "answer"}, cascade={"first": 2})
    async with Stack(cfg, models=models) as stack:
        result = await stack.run(ASK)
    assert not models["dear"].requests and not models["agg"].requests  # type: ignore[attr-defined]
    (decision,) = result.decisions
    assert decision.skipped == ["dear", "aggregator"] and decision.answer_from == "cheap1"
    assert [m.label for m in result.layers[0].members] == ["cheap1", "cheap2"]


async def test_a_cascade_escalates_to_the_rest_then_the_stack_on_disagreement() -> None:
    models = {
        "a": fixed("a", "#### 42"),
        "b": fixed("b", "#### 41"),
        "c": fixed("c", "#### 40"),
        "agg": fixed("agg", "#### 42"),
    }
    cfg = config(
        [names("a", "b", "c")],
        early_exit={"rule": "answer"},
        cascade={"first": 2, "order": "position"},
    )
    async with Stack(cfg, models=models) as stack:
        result = await stack.run(ASK)
    assert [d.kind for d in result.decisions] == ["escalate"]
    assert [m.label for m in result.layers[0].members] == ["a", "b", "c"]  # member order
    assert result.final == "#### 42" and result.aggregator is not None
    # The aggregator saw all three answers as references, in member order.
    system = models["agg"].requests[0].messages[0].text  # type: ignore[attr-defined]
    assert system.index("#### 41") < system.index("#### 40")


async def test_no_early_exit_while_tools_are_in_play() -> None:
    from moakit.messages import ToolSpec

    agg = FunctionModel(lambda r: "done", name="agg", tools=True)
    models = {"a": fixed("a", "#### 42"), "b": fixed("b", "#### 42"), "agg": agg}
    cfg = config([names("a", "b")], early_exit={"rule": "answer"})
    request = ChatRequest(messages=ASK, tools=(ToolSpec(name="calc"),))
    async with Stack(cfg, models=models) as stack:
        result = await stack.run(request)
    assert result.decisions == [] and result.final == "done"


def test_a_cascade_needs_an_agreement_rule() -> None:
    with pytest.raises(ConfigError, match="early_exit"):
        config([names("a", "b")], cascade={"first": 1})


def test_unchanged_stacks_keep_their_identity() -> None:
    from moakit.config import config_hash, load_preset

    preset = load_preset("local-fast")
    assert "adaptive" not in preset.model_dump() and "advice" not in preset.model_dump()
    on = preset.model_copy(
        update={"adaptive": config([names("a")], early_exit={"rule": "answer"}).adaptive}
    )
    assert config_hash(on) != config_hash(preset)  # a stack that exits early is another stack
