"""Staircase over real HTTP: assistant prefill on the wire (vLLM-style ``continue_final_message``
against the fake backend, Anthropic's trailing assistant turn against a fake Messages API), and
cancellation leaving nothing in flight."""

from __future__ import annotations

import asyncio
from contextlib import aclosing
from typing import Any

import pytest

from moakit import ConfigError, Stack, parse_config
from moakit.config import MemberSpec
from moakit.errors import ModelCallError
from moakit.events import TextDelta
from moakit.models.base import ChatRequest, collect
from moakit.models.openai_compat import build
from moakit.models.provider import ResourcePool
from moakit.result import Result
from moakit.testing.fake_backend import (
    Behavior,
    FakeBackend,
    Latency,
    behavior_from_mapping,
    expected_content,
)
from test_anthropic_wire import Fake, message_end, message_start, model, sse, text_events

CONV = [{"role": "user", "content": "Tell me a story."}]


def config(base_url: str, *, prefill: bool = True, layers: int = 1, **extra: Any) -> Any:
    return parse_config(
        {
            "defaults": {
                "base_url": base_url,
                "timeout_s": 30,
                "options": {"continue_final_message": prefill},
            },
            "layers": [[{"model": f"p{n}a"}, {"model": f"p{n}b"}] for n in range(layers)],
            "aggregator": {"model": "agg"},
            "strategy": "staircase",
            "staircase": {"chunk_tokens": 4},
            **extra,
        }
    )


async def test_aggregator_continues_its_answer_over_http() -> None:
    streaming = Behavior(latency=Latency(ttft_s=0.01, per_token_s=0.004), tokens=24)
    models = {"p0a": streaming, "p0b": streaming, "agg": Behavior(tokens=40)}
    deltas: list[str] = []
    result: Result | None = None
    async with FakeBackend(models=models) as fb:
        async with (
            Stack(config(fb.base_url)) as stack,
            aclosing(stack.events(CONV)) as events,
        ):
            async for event in events:
                if isinstance(event, TextDelta):
                    deltas.append(event.text)
                result = getattr(event, "result", result)
        bodies = [b for b in fb.stats.received if b["model"] == "agg"]
    assert result is not None and result.aggregator is not None
    text = "".join(deltas)
    # One answer of the backend's length, however many steps wrote it, sent once.
    assert text == result.final and len(text.split()) == 40
    steps = result.aggregator.steps
    assert len(bodies) == len(steps) >= 2 and steps[-1].final
    assert "continue_final_message" not in bodies[0]
    assert bodies[0]["max_tokens"] == 4
    for body, step_before in zip(bodies[1:], steps, strict=False):
        assert body["continue_final_message"] is True
        assert body["add_generation_prompt"] is False
        assert body["messages"][-1] == {
            "role": "assistant",
            "content": text[: step_before.text_chars],
        }


async def test_prefill_needs_the_endpoint_option() -> None:
    async with FakeBackend() as fb:
        with pytest.raises(ConfigError, match="continue a partial answer"):
            Stack(config(fb.base_url, prefill=False))
        pool = ResourcePool()
        try:
            plain = build(MemberSpec(model="m", base_url=fb.base_url), pool)
            request = ChatRequest(messages=CONV, prefill="Once")
            with pytest.raises(ModelCallError, match="continue_final_message"):
                await collect(plain.stream(request))
        finally:
            await pool.aclose()
        assert fb.stats.requests == 0  # refused before anything was sent


async def test_cancelling_a_staircase_leaves_nothing_in_flight() -> None:
    slow = Behavior(latency=Latency(ttft_s=0.01, per_token_s=0.01), tokens=2000)
    models = {m: slow for m in ("p0a", "p0b", "p1a", "p1b", "agg")}
    async with FakeBackend(models=models) as fb:
        async with Stack(config(fb.base_url, layers=2)) as stack:
            async with aclosing(stack.events(CONV)) as events:
                async for event in events:
                    if isinstance(event, TextDelta):
                        # Layer 1 is still writing while the aggregator writes (layer 2
                        # may be between two steps).
                        assert fb.stats.in_flight >= 3
                        break
            await asyncio.wait_for(fb.wait_idle(5), 10)
        assert fb.stats.in_flight == 0 and fb.stats.cancelled >= 5


async def test_anthropic_prefill_is_a_trailing_assistant_turn(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake = Fake(sse(message_start() + text_events(" upon", " a time") + message_end()))
    async with model(fake, monkeypatch) as m:
        assert m.profile.prefill
        completion = await collect(m.stream(ChatRequest(messages=CONV, prefill="Once ")))
    # The API refuses trailing whitespace there: sent stripped, the model's leading space
    # dropped, so the text joins up as "Once upon a time".
    assert fake.bodies[0]["messages"][-1] == {"role": "assistant", "content": "Once"}
    assert "Once " + completion.text == "Once upon a time"


async def test_fake_backend_continues_the_answer_it_would_have_given() -> None:
    async with FakeBackend(default=Behavior(tokens=6)) as fb:
        pool = ResourcePool()
        try:
            spec = MemberSpec(
                model="m", base_url=fb.base_url, options={"continue_final_message": True}
            )
            m = build(spec, pool)
            assert m.profile.prefill
            whole = expected_content("m", CONV, 6)
            written = " ".join(whole.split()[:2])
            for complete in (True, False):
                request = ChatRequest(messages=CONV, prefill=written)
                if complete:
                    completion = await m.complete(request)
                else:
                    completion = await collect(m.stream(request))
                assert written + completion.text == whole
                assert completion.finish_reason == "stop"
        finally:
            await pool.aclose()


def test_fake_backend_prompt_reading_cost_is_configurable() -> None:
    behavior = behavior_from_mapping({"prompt_per_token_s": 0.001, "per_token_s": 0.01})
    assert behavior.latency.prompt_per_token_s == 0.001
    with pytest.raises(ValueError, match="prompt_per_token_s"):
        Latency(prompt_per_token_s=-1.0)
