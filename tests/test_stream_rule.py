"""Issue 8 item 2, engine side: a stream never shows text that is not the answer.

Streaming: once the final aggregator has sent text, a failure of that attempt is final.
Not streaming: retries and fallbacks stay free and a failed attempt's text never reaches
``result.final``. Driven by the fault backend's mid-stream reset (two chunks, then a reset)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from moakit import Stack, parse_config
from moakit.errors import AggregatorFailed
from moakit.events import AggregatorAttemptFailed, Event, RunFailed, TextDelta
from moakit.testing.fake_backend import Behavior, FakeBackend, Fault, expected_content

CONV = [{"role": "user", "content": "q"}]


def stack(base_url: str, **aggregator: Any) -> Stack:
    return Stack(
        parse_config(
            {
                "defaults": {"base_url": base_url, "timeout_s": 5, "max_tokens": 30},
                "retry": {"initial_s": 0.01, "max_s": 0.02},
                "layers": [[{"model": "p1"}, {"model": "p2"}]],
                # Default retries (2) and a fallback: both would take over before the rule.
                "aggregator": {"model": "agg", "fallbacks": [{"model": "backup"}], **aggregator},
            }
        )
    )


def agg_body(fb: FakeBackend, model: str) -> list[dict[str, Any]]:
    bodies = [b for b in fb.stats.received if b["model"] == model]
    assert bodies, f"{model} was never called"
    messages: list[dict[str, Any]] = bodies[-1]["messages"]
    return messages


async def test_streaming_failure_after_text_is_final() -> None:
    reset = Behavior(fault=Fault("reset_mid_stream"), tokens=30)
    seen: list[Event] = []
    async with FakeBackend(models={"agg": reset}) as fb, stack(fb.base_url) as s:
        with pytest.raises(AggregatorFailed, match="mid-answer") as info:
            async for _ in s.events(CONV, streaming=True, observers=[seen.append]):
                pass
        await fb.wait_idle(5)
    sent = "".join(e.text for e in seen if isinstance(e, TextDelta))
    assert sent  # the reset came after some text
    result = info.value.result
    assert result is not None
    assert result.final == sent and result.error is not None
    # The full answer starts with what was sent: the text shown was a true prefix.
    assert expected_content("agg", agg_body(fb, "agg"), 30).startswith(sent)
    # No retry, no fallback once text is out.
    assert fb.stats.requests_by_model["agg"] == 1
    assert "backup" not in fb.stats.requests_by_model
    failed = [e for e in seen if isinstance(e, AggregatorAttemptFailed)]
    assert len(failed) == 1 and failed[0].had_text and not failed[0].will_retry
    assert isinstance(seen[-1], RunFailed) and seen[-1].result.final == sent


async def test_streaming_failure_before_text_still_retries_and_falls_back() -> None:
    # A 503 happens before any content: retries (2) and the fallback are still free.
    down = Behavior(fault=Fault("http_503", retry_after_s=0.01))
    seen: list[Event] = []
    async with FakeBackend(models={"agg": down}) as fb, stack(fb.base_url) as s:
        result = await s.run(CONV, streaming=True, observers=[seen.append])
    assert fb.stats.requests_by_model["agg"] == 3
    assert result.final == expected_content("backup", agg_body(fb, "backup"), 12)
    assert "".join(e.text for e in seen if isinstance(e, TextDelta)) == result.final
    failed = [e for e in seen if isinstance(e, AggregatorAttemptFailed)]
    assert [e.will_retry for e in failed] == [True, True, True]
    assert not any(e.had_text for e in failed)


@pytest.mark.parametrize("times", [1, None])
async def test_non_streaming_run_recovers_without_duplicating_text(times: int | None) -> None:
    # times=1: the aggregator's own retry answers; None: every try resets, the fallback answers.
    reset = Behavior(fault=Fault("reset_mid_stream", times=times), tokens=30)
    seen: list[Event] = []
    async with FakeBackend(models={"agg": reset}) as fb, stack(fb.base_url) as s:
        # member_ttft: the aggregator streams (unseen), so its failed attempts had text, which
        # a non-streaming run must never pass on.
        run = s.run(CONV, observers=[seen.append], member_ttft=True)
        result = await asyncio.wait_for(run, 10)
    winner = "agg" if times == 1 else "backup"
    assert result.final == expected_content(winner, agg_body(fb, winner), 30 if times else 12)
    assert [e.text for e in seen if isinstance(e, TextDelta)] == [result.final]
    assert fb.stats.requests_by_model["agg"] == (2 if times == 1 else 3)
    failed = [e for e in seen if isinstance(e, AggregatorAttemptFailed)]
    assert failed and all(e.had_text and e.will_retry for e in failed)
    assert result.aggregators[-1].label == winner and result.aggregators[-1].ok
