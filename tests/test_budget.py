"""Per-query budgets (``moakit.engine.budget``): the engine never starts a call that could break
a limit; it calls fewer members, runs fewer layers, or goes straight to the aggregator, whose
share is set aside from the start, and says why."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from moakit import ConfigError, Stack, parse_config
from moakit.policies import BudgetConfig
from moakit.testing.models import FunctionModel

ASK = [{"role": "user", "content": "Name a colour."}]


def answering(name: str, text: str = "blue", *, delay_s: float = 0.0) -> FunctionModel:
    return FunctionModel(lambda r: f"{name}: {text}", name=name, delay_s=delay_s)


def stack_config(layers: list[list[str]], **extra: Any) -> Any:
    return parse_config(
        {
            "layers": [[{"model": m} for m in layer] for layer in layers],
            "aggregator": {"model": "agg"},
            **extra,
        }
    )


def everyone(*names: str, delay_s: float = 0.0) -> dict[str, FunctionModel]:
    return {n: answering(n, delay_s=delay_s) for n in (*names, "agg")}


async def test_max_calls_cuts_members_and_keeps_the_aggregators_call() -> None:
    models = everyone("a", "b", "c", "d", "e")
    cfg = stack_config([["a", "b", "c"], ["d", "e"]], budget={"max_calls": 3})
    async with Stack(cfg, models=models) as stack:
        result = await stack.run(ASK)
    assert result.llm_calls == 3 and result.final == "agg: blue"
    called = [n for n, m in models.items() if m.requests]
    assert called == ["a", "b", "agg"]
    (first, second) = result.decisions
    assert first.kind == second.kind == "budget"
    assert first.skipped == ["c"] and "max_calls 3" in first.detail
    assert second.skipped == ["d", "e"]


async def test_a_request_budget_tightens_the_stacks_and_may_leave_only_the_aggregator() -> None:
    models = everyone("a", "b")
    cfg = stack_config([["a", "b"]], budget={"max_calls": 10})
    async with Stack(cfg, models=models) as stack:
        result = await stack.run(ASK, budget=BudgetConfig(max_calls=1))
    assert result.llm_calls == 1 and result.final == "agg: blue"
    assert not models["a"].requests and result.decisions[0].skipped == ["a", "b"]


async def test_max_tokens_bounds_every_call_and_the_total() -> None:
    models = everyone("a", "b", "c")
    cfg = stack_config(
        [["a", "b", "c"]],
        defaults={"max_tokens": 100},
        budget={"max_tokens": 1000},
    )
    async with Stack(cfg, models=models) as stack:
        result = await stack.run(ASK)
    # Worst cases: each member ~105 (prompt + 100), the aggregator's share grows with each
    # reference; so not all three proposers fit, but the aggregator always does.
    assert result.aggregator is not None and result.final
    assert 0 < len(result.layers[0].members) < 3
    assert result.usage.total_tokens <= 1000
    assert result.decisions and "max_tokens 1000" in result.decisions[0].detail


async def test_a_member_without_max_tokens_is_given_the_budgets_default() -> None:
    models = everyone("a")
    cfg = stack_config([["a"]], budget={"max_tokens": 5000, "default_max_tokens": 77})
    async with Stack(cfg, models=models) as stack:
        await stack.run(ASK)
    assert models["a"].requests[0].max_tokens == 77


async def test_max_cost_counts_prices() -> None:
    models = everyone("cheap", "dear")
    cfg = parse_config(
        {
            "layers": [
                [
                    {"model": "cheap", "price_in_per_mtok": 1, "price_out_per_mtok": 1},
                    {"model": "dear", "price_in_per_mtok": 1000, "price_out_per_mtok": 1000},
                ]
            ],
            "aggregator": {"model": "agg", "price_in_per_mtok": 1, "price_out_per_mtok": 1},
            "defaults": {"max_tokens": 100},
            "budget": {"max_cost_usd": 0.01},
        }
    )
    async with Stack(cfg, models=models) as stack:
        result = await stack.run(ASK)
    assert not models["dear"].requests and models["cheap"].requests
    assert result.cost_usd is not None and result.cost_usd <= 0.01


async def test_no_retry_the_budget_cannot_afford() -> None:
    attempts: list[int] = []

    def flaky(request: Any) -> Any:
        attempts.append(1)
        return TimeoutError("slow") if len(attempts) == 1 else "a: blue"

    models = {"a": FunctionModel(flaky, name="a"), "b": answering("b"), "agg": answering("agg")}
    cfg = stack_config(
        [["a", "b"]],
        retry={"retries": 2, "initial_s": 0, "max_s": 0},
        budget={"max_calls": 3},
    )
    async with Stack(cfg, models=models) as stack:
        result = await stack.run(ASK)
    assert len(attempts) == 1 and result.llm_calls == 3
    assert any("no retry of a" in d.detail for d in result.decisions)


async def test_the_latency_budget_skips_a_layer_that_would_overrun() -> None:
    models = everyone("a", "b", delay_s=0.2)
    cfg = stack_config([["a"], ["b"]], budget={"max_latency_s": 0.5})
    async with Stack(cfg, models=models) as stack:
        result = await stack.run(ASK)
    # Layer 1 took 0.2 s; layer 2 would end near 0.4 s, past 70% of 0.5 s.
    assert not models["b"].requests and result.final == "agg: blue"
    assert result.decisions[0].skipped == ["b"] and "max_latency_s" in result.decisions[0].detail


def test_staircase_refuses_a_budget() -> None:
    cfg = parse_config(
        {
            "layers": [[{"model": "a"}]],
            "aggregator": {"model": "agg"},
            "strategy": "staircase",
            "budget": {"max_calls": 3},
        }
    )
    agg = FunctionModel(lambda r: "x", name="agg", prefill=True)
    with pytest.raises(ConfigError) as err:
        Stack(cfg, models={"a": answering("a"), "agg": agg})
    assert err.value.field == "budget"
    asyncio.run(asyncio.sleep(0))
