from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest

from moakit import ConfigError, LayerFailed, Stack, parse_config
from moakit.errors import AggregatorFailed, DeadlineExceeded, ModelCallError
from moakit.events import MemberFinished, TextDelta
from moakit.messages import to_openai
from moakit.models.base import ChatRequest
from moakit.prompts import AGGREGATE_AND_SYNTHESIZE
from moakit.testing.models import FunctionModel, echo_model


def config(layers: list[list[str]], aggregator: str = "agg", **extra: Any) -> Any:
    return parse_config(
        {
            "layers": [[{"model": m} for m in layer] for layer in layers],
            "aggregator": {"model": aggregator},
            # The paper's block, byte-exact, so tests can read the prompts (fenced is default).
            "references": {"formatter": "paper"},
            **extra,
        }
    )


CONV = [{"role": "user", "content": "What is MoA?"}]


async def test_layers_see_original_query_and_numbered_references() -> None:
    models = {n: echo_model(n) for n in ("a", "b", "c", "agg")}
    async with Stack(config([["a", "b"], ["c"]]), models=models) as stack:
        result = await stack.run(CONV)
    # Layer 1 answers plainly: the conversation exactly, nothing injected.
    assert to_openai(models["a"].requests[0].messages) == CONV
    # Layer 2 sees x1 plus layer 1's answers in member order.
    expected_l2 = [
        {
            "role": "system",
            "content": AGGREGATE_AND_SYNTHESIZE + "\n1. a: What is MoA?\n2. b: What is MoA?",
        },
        *CONV,
    ]
    assert to_openai(models["c"].requests[0].messages) == expected_l2
    # The aggregator sees x1 (not layer 2's rewrite) plus layer 2's answer only.
    assert to_openai(models["agg"].requests[0].messages) == [
        {"role": "system", "content": AGGREGATE_AND_SYNTHESIZE + "\n1. c: What is MoA?"},
        *CONV,
    ]
    assert result.final == "agg: What is MoA?"
    assert [len(layer.members) for layer in result.layers] == [2, 1]
    assert result.llm_calls == 4 and result.serial_rounds == 3
    json.loads(result.model_dump_json())  # serializes


async def test_temperature_split_and_overrides() -> None:
    models = {n: echo_model(n) for n in ("a", "agg")}
    async with Stack(config([["a"]]), models=models) as stack:
        await stack.run(ChatRequest(messages=CONV, max_tokens=7, seed=3))
    assert models["a"].requests[0].temperature == 0.7
    agg = models["agg"].requests[0]
    assert (agg.temperature, agg.max_tokens, agg.seed) == (0.4, 7, 3)


async def test_layer_runs_members_concurrently() -> None:
    names = [f"m{i}" for i in range(6)]
    models: dict[str, Any] = {n: echo_model(n, delay_s=0.2) for n in names}
    models["agg"] = echo_model("agg")
    async with Stack(config([names]), models=models) as stack:
        t0 = time.monotonic()
        result = await stack.run(CONV)
        elapsed = time.monotonic() - t0
    assert result.layers[0].answered == 6
    assert elapsed < 0.6, f"6 × 0.2 s members took {elapsed:.2f}s: not concurrent"


async def test_single_proposer_variant_varies_seed_and_temperature() -> None:
    model = echo_model("s")
    cfg = parse_config(
        {
            "layers": [[{"model": "s", "n": 3, "seed": 5, "temperature_step": 0.1}]],
            "aggregator": {"model": "s"},
        }
    )
    async with Stack(cfg, models={"s": model}) as stack:
        result = await stack.run(CONV)
    layer1 = model.requests[:3]
    assert sorted(r.seed for r in layer1 if r.seed is not None) == [5, 6, 7]
    assert sorted(r.temperature for r in layer1 if r.temperature is not None) == [0.7, 0.8, 0.9]
    assert [m.label for m in result.layers[0].members] == ["s#1", "s#2", "s#3"]


def failing(exc: Exception) -> FunctionModel:
    return FunctionModel(lambda r: exc, name="bad")


async def test_failed_and_empty_members_are_dropped_when_quorum_holds() -> None:
    models = {
        "good": echo_model("good"),
        "empty": FunctionModel(lambda r: "   ", name="empty"),
        "boom": failing(ModelCallError("bad request", kind="http", status=400)),
        "agg": echo_model("agg"),
    }
    async with Stack(config([["good", "empty", "boom"]]), models=models) as stack:
        result = await stack.run(CONV)
    members = {m.label: m for m in result.layers[0].members}
    assert members["empty"].error and "empty" in members["empty"].error
    assert "http 400" in (members["boom"].error or "")
    assert len(members["boom"].attempts) == 1  # 400 is not retried
    # Only the good answer reaches the aggregator.
    system = models["agg"].requests[0].messages[0].text
    assert system.endswith("\n1. good: What is MoA?")
    assert len(result.failures) == 2


async def test_layer_fails_below_min_successful_listing_reasons() -> None:
    models = {
        "good": echo_model("good"),
        "boom": failing(ModelCallError("kaput", kind="http", status=401)),
        "agg": echo_model("agg"),
    }
    async with Stack(config([["good", "boom"]], min_successful=2), models=models) as stack:
        with pytest.raises(LayerFailed) as info:
            await stack.run(CONV)
    assert "1 of 2 members answered, 2 needed" in str(info.value)
    assert "boom: http 401: kaput" in str(info.value)
    assert info.value.result is not None and info.value.result.layers[0].answered == 1


async def test_retryable_errors_are_retried() -> None:
    calls = {"n": 0}

    def flaky(request: ChatRequest) -> Any:
        calls["n"] += 1
        if calls["n"] < 3:
            return ModelCallError("overloaded", kind="http", status=503, retry_after_s=0.01)
        return "finally"

    models = {"flaky": FunctionModel(flaky, name="flaky"), "agg": echo_model("agg")}
    async with Stack(config([["flaky"]]), models=models) as stack:
        result = await stack.run(CONV)
    member = result.layers[0].members[0]
    assert member.output == "finally"
    assert [a.error is not None for a in member.attempts] == [True, True, False]
    assert result.llm_calls == 4


async def test_per_call_timeout_fails_member() -> None:
    models = {
        "slow": echo_model("slow", delay_s=5),
        "fast": echo_model("fast"),
        "agg": echo_model("agg"),
    }
    cfg = parse_config(
        {
            "layers": [[{"model": "slow", "timeout_s": 0.2, "retries": 0}, {"model": "fast"}]],
            "aggregator": {"model": "agg"},
        }
    )
    t0 = time.monotonic()
    async with Stack(cfg, models=models) as stack:
        result = await stack.run(CONV)
    assert time.monotonic() - t0 < 2
    assert "timeout" in (result.layers[0].members[0].error or "")


async def test_straggler_cutoff_cancels_slow_members() -> None:
    models = {
        "fast1": echo_model("fast1", delay_s=0.05),
        "fast2": echo_model("fast2", delay_s=0.05),
        "slow": echo_model("slow", delay_s=10),
        "agg": echo_model("agg"),
    }
    cfg = config([["fast1", "fast2", "slow"]], min_successful=2, straggler={"grace_s": 0.1})
    t0 = time.monotonic()
    async with Stack(cfg, models=models) as stack:
        result = await stack.run(CONV)
    assert time.monotonic() - t0 < 1.5
    slow = result.layers[0].members[2]
    assert slow.cancelled and "straggler" in (slow.error or "")


async def test_deadline_fails_query_without_quorum() -> None:
    models = {"slow": echo_model("slow", delay_s=10), "agg": echo_model("agg")}
    async with Stack(config([["slow"]], deadline_s=0.5), models=models) as stack:
        t0 = time.monotonic()
        with pytest.raises(DeadlineExceeded):
            await stack.run(CONV)
        assert time.monotonic() - t0 < 2


async def test_fallback_aggregator_takes_over() -> None:
    models = {
        "a": echo_model("a"),
        "agg": failing(ModelCallError("down", kind="http", status=500)),
        "backup": echo_model("backup"),
    }
    cfg = parse_config(
        {
            "layers": [[{"model": "a"}]],
            "aggregator": {"model": "agg", "retries": 0, "fallbacks": [{"model": "backup"}]},
        }
    )
    async with Stack(cfg, models=models) as stack:
        result = await stack.run(CONV)
    assert result.final == "backup: What is MoA?"
    assert [m.label for m in result.aggregators] == ["agg", "backup"]
    assert result.aggregators[0].error is not None


async def test_all_aggregators_failing_raises() -> None:
    models = {"a": echo_model("a"), "agg": failing(ModelCallError("x", kind="http", status=400))}
    async with Stack(config([["a"]]), models=models) as stack:
        with pytest.raises(AggregatorFailed, match="http 400"):
            await stack.run(CONV)


async def test_stream_yields_same_text_as_run() -> None:
    models = {"a": echo_model("a"), "agg": echo_model("agg")}
    async with Stack(config([["a"]]), models=models) as stack:
        deltas = [e.text async for e in stack.events(CONV) if isinstance(e, TextDelta)]
        result = await stack.run(CONV)
    assert len(deltas) > 1
    assert "".join(deltas) == result.final


async def test_closing_the_event_stream_cancels_members() -> None:
    cancelled = asyncio.Event()

    async def hang(request: ChatRequest) -> str:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return "never"

    models = {"fast": echo_model("fast"), "hang": FunctionModel(hang), "agg": echo_model("agg")}
    async with Stack(config([["fast", "hang"]]), models=models) as stack:
        events = stack.events(CONV)
        async for event in events:
            if isinstance(event, MemberFinished):
                break
        await events.aclose()
    await asyncio.wait_for(cancelled.wait(), 1)


def test_config_errors_name_field_and_value() -> None:
    with pytest.raises(ConfigError) as info:
        config([["a"]], proposer_temperature=5)
    assert "proposer_temperature" in str(info.value) and "5" in str(info.value)
    with pytest.raises(ConfigError) as info:
        parse_config({"layers": [[{"model": "a", "temprature": 1}]], "aggregator": {"model": "b"}})
    assert "layers.0.members.0.temprature" in str(info.value)
    with pytest.raises(ConfigError, match=r"layers\.0\.min_successful = 3 exceeds"):
        parse_config(
            {
                "layers": [{"members": [{"model": "a"}], "min_successful": 3}],
                "aggregator": {"model": "b"},
            }
        )
    with pytest.raises(ConfigError, match="unknown provider 'nope'"):
        Stack(
            parse_config(
                {
                    "layers": [[{"model": "a", "provider": "nope"}]],
                    "aggregator": {"model": "a", "provider": "nope"},
                }
            )
        )


async def test_deadline_ends_aggregator_retries_as_it_ends_member_retries() -> None:
    models = {"a": echo_model("a"), "agg": echo_model("agg", delay_s=10)}
    async with Stack(config([["a"]], deadline_s=0.5), models=models) as stack:
        t0 = time.monotonic()
        with pytest.raises(DeadlineExceeded) as info:
            await stack.run(CONV)
        assert time.monotonic() - t0 < 2
    assert info.value.result is not None
    agg = info.value.result.aggregators[0]
    assert len(agg.attempts) == 1 and (agg.attempts[0].error or "").startswith("deadline")


async def test_every_sampling_override_reaches_the_final_aggregator_only() -> None:
    models = {n: echo_model(n) for n in ("a", "agg")}
    fmt = {"type": "json_object"}
    request = ChatRequest(
        messages=CONV,
        top_p=0.5,
        presence_penalty=0.1,
        frequency_penalty=0.2,
        response_format=fmt,
        stop=["\n\n"],
    )
    async with Stack(config([["a"]]), models=models) as stack:
        await stack.run(request)
    agg = models["agg"].requests[0]
    assert (agg.top_p, agg.presence_penalty, agg.frequency_penalty) == (0.5, 0.1, 0.2)
    assert agg.response_format == fmt and list(agg.stop or []) == ["\n\n"]
    proposer = models["a"].requests[0]
    assert (proposer.top_p, proposer.response_format, proposer.stop) == (None, None, None)
