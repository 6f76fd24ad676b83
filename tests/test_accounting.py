"""Honest accounting (usage of failed, retried and cut calls) and a stack that really is a model."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from moakit import Stack, parse_config
from moakit.errors import LayerFailed, ModelCallError, StackFailed
from moakit.models.base import ChatRequest, Chunk, Model, Usage
from moakit.testing.models import FunctionModel, echo_model

CONV = [{"role": "user", "content": "q"}]


class Scripted(Model):
    """Streams ``text`` with ``usage``, then (when ``fail``) dies; ``hang`` never finishes."""

    def __init__(
        self, name: str, *, usage: Usage, fail: int = 0, hang: bool = False, text: str = "hi"
    ) -> None:
        self.name = name
        self.usage = usage
        self.fail = fail  # how many attempts die after sending text and usage
        self.hang = hang
        self.text = text
        self.calls = 0

    async def stream(self, request: ChatRequest) -> AsyncIterator[Chunk]:
        self.calls += 1
        yield Chunk(text=self.text, usage=self.usage)
        if self.hang:
            await asyncio.sleep(30)
        if self.calls <= self.fail:
            raise ModelCallError("connection reset", kind="connection")
        yield Chunk(finish_reason="stop", usage=self.usage)


def cfg(layer: list[dict[str, Any]], **extra: Any) -> Any:
    return parse_config(
        {
            "retry": {"initial_s": 0.0, "max_s": 0.0},
            "layers": [layer],
            "aggregator": {"model": "agg"},
            **extra,
        }
    )


async def test_usage_of_failed_and_retried_attempts_counts() -> None:
    u = Usage(prompt_tokens=10, completion_tokens=3)
    flaky = Scripted("flaky", usage=u, fail=2)
    agg = Scripted("agg", usage=Usage(prompt_tokens=1, completion_tokens=1))
    async with Stack(cfg([{"model": "flaky"}]), models={"flaky": flaky, "agg": agg}) as s:
        result = await s.run(CONV)
    member = result.layers[0].members[0]
    assert member.ok and len(member.attempts) == 3
    assert [a.usage for a in member.attempts] == [u, u, u]
    assert member.usage == Usage(prompt_tokens=30, completion_tokens=9)
    assert result.usage == Usage(prompt_tokens=31, completion_tokens=10)


async def test_usage_reported_with_a_call_error_counts() -> None:
    spent = Usage(prompt_tokens=7, completion_tokens=2)
    bad = FunctionModel(lambda r: ModelCallError("bad", kind="http", status=400, usage=spent))
    models = {"bad": bad, "good": echo_model("good"), "agg": echo_model("agg")}
    async with Stack(cfg([{"model": "bad"}, {"model": "good"}]), models=models) as s:
        result = await s.run(CONV)
    failed = result.layers[0].members[0]
    assert not failed.ok and failed.usage == spent
    assert result.usage.prompt_tokens >= spent.prompt_tokens + 1


async def test_usage_of_a_cut_straggler_counts() -> None:
    u = Usage(prompt_tokens=5, completion_tokens=4)
    models = {
        "fast": echo_model("fast"),
        "slow": Scripted("slow", usage=u, hang=True),
        "agg": echo_model("agg"),
    }
    config = cfg([{"model": "fast"}, {"model": "slow"}], straggler={"grace_s": 0.05})
    async with Stack(config, models=models) as s:
        # Streamed (member_ttft), so usage the stream reported before the cut is seen: a plain
        # request cut mid-flight has reported nothing yet.
        result = await asyncio.wait_for(s.run(CONV, member_ttft=True), 5)
    slow = result.layers[0].members[1]
    assert slow.cancelled and slow.usage == u
    assert slow.attempts[-1].error == "cancelled: straggler cut-off"
    assert result.llm_calls == 3  # fast, the cut slow call, agg: every request sent


async def test_a_stack_is_a_member_of_another_stack() -> None:
    inner = Stack(
        cfg([{"model": "x"}, {"model": "y"}], name="inner"),
        models={n: echo_model(n) for n in ("x", "y", "agg")},
    )
    outer_models: dict[str, Model] = {
        "inner": inner,
        "p": echo_model("p"),
        "agg": echo_model("agg"),
    }
    async with inner, Stack(cfg([{"model": "inner"}, {"model": "p"}]), models=outer_models) as s:
        result = await s.run(CONV)
        nested = result.layers[0].members[0]
        assert nested.ok and nested.output == "agg: q"  # the inner stack's answer
        inner_alone = await inner.run(CONV)
    # The inner run's usage (its 3 calls) is the nested member's usage, and in the totals.
    assert nested.usage == inner_alone.usage and nested.usage.total_tokens > 0
    p = result.layers[0].members[1]
    assert result.usage == nested.usage + p.usage + result.aggregators[0].usage


@pytest.mark.parametrize(("status", "retryable"), [(503, True), (400, False)])
async def test_a_failing_nested_stack_raises_a_model_call_error(
    status: int, retryable: bool
) -> None:
    spent = Usage(prompt_tokens=4, completion_tokens=1)
    dead = FunctionModel(lambda r: ModelCallError("down", kind="http", status=status, usage=spent))
    inner = Stack(
        cfg([{"model": "dead", "retries": 0}], name="inner"),
        models={"dead": dead, "agg": echo_model("agg")},
    )
    with pytest.raises(StackFailed) as info:
        await inner.complete(ChatRequest(messages=CONV))
    err = info.value
    assert isinstance(err, ModelCallError) and err.retryable is retryable
    assert err.usage == spent and isinstance(err.__cause__, LayerFailed)
    assert err.result is not None and err.result.layers[0].members[0].usage == spent

    # As a member of an outer stack: retried only when the cause was, usage counted each time.
    outer_models: dict[str, Model] = {
        "inner": inner,
        "p": echo_model("p"),
        "agg": echo_model("agg"),
    }
    async with inner, Stack(cfg([{"model": "inner"}, {"model": "p"}]), models=outer_models) as s:
        result = await s.run(CONV)
    nested = result.layers[0].members[0]
    assert not nested.ok and (nested.error or "").startswith("stack: layer 1")
    assert len(nested.attempts) == (3 if retryable else 1)
    assert nested.usage.prompt_tokens == spent.prompt_tokens * len(nested.attempts)
