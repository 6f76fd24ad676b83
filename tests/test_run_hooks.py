"""Run identity, observers and the live-view events (issue 9: hooks the next capabilities need)."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from typing import Any

import pytest

from moakit import Stack, parse_config
from moakit.config import config_hash
from moakit.events import (
    AggregatorStarted,
    BaseEvent,
    Event,
    LayerFinished,
    LayerStarted,
    MemberDelta,
    MemberFinished,
    MemberStarted,
    RunFinished,
    RunStarted,
    TextDelta,
)
from moakit.models.base import ChatRequest, Chunk, Completion, Model
from moakit.testing.models import echo_model

CONV = [{"role": "user", "content": "What is MoA?"}]


def two_layers(**extra: Any) -> Any:
    return parse_config(
        {
            "layers": [[{"model": "a"}, {"model": "b"}], [{"model": "c"}]],
            "aggregator": {"model": "agg"},
            **extra,
        }
    )


def models(delay_s: float = 0.0) -> dict[str, Any]:
    return {n: echo_model(n, delay_s=delay_s) for n in ("a", "b", "c", "agg")}


async def test_every_event_carries_the_run_id_and_a_timestamp() -> None:
    seen: list[Event] = []
    before = time.time()
    async with Stack(two_layers(), models=models()) as stack:
        result = await stack.run(CONV, run_id="req-123", observers=[seen.append])
    assert result.run_id == "req-123"
    assert seen and all(isinstance(e, BaseEvent) for e in seen)
    assert {e.run_id for e in seen} == {"req-123"}
    stamps = [e.ts for e in seen]
    assert stamps == sorted(stamps) and before <= stamps[0] <= stamps[-1] <= time.time()
    assert isinstance(seen[0], RunStarted) and isinstance(seen[-1], RunFinished)
    assert seen[0].stack == "custom" and seen[0].config_hash == config_hash(stack.config)


async def test_run_ids_default_to_fresh_uuids() -> None:
    async with Stack(two_layers(), models=models()) as stack:
        first = await stack.run(CONV)
        second = await stack.run(CONV)
    assert len(first.run_id) == 32 and first.run_id != second.run_id


async def test_events_is_an_async_generator_with_the_same_sequence_observers_see() -> None:
    seen: list[Event] = []
    async with Stack(two_layers(), models=models()) as stack:
        events = stack.events(CONV, observers=[seen.append])
        assert isinstance(events, AsyncGenerator)
        yielded = [e async for e in events]
    assert yielded == seen


async def test_member_started_carries_the_exact_request_and_deltas_stream() -> None:
    seen: list[Event] = []
    mods = models()
    async with Stack(two_layers(), models=mods) as stack:
        await stack.run(ChatRequest(messages=CONV, max_tokens=9), observers=[seen.append])
    started = [e for e in seen if isinstance(e, MemberStarted)]
    by_who = {(e.layer, e.index): e for e in started}
    # Layer numbers 1-based, member indexes 0-based; the aggregator's layer is len(layers)+1.
    assert sorted(by_who) == [(1, 0), (1, 1), (2, 0), (3, 0)]
    assert by_who[(1, 1)].label == "b" and by_who[(1, 1)].attempt == 1
    assert by_who[(2, 0)].request is mods["c"].requests[0]
    assert by_who[(3, 0)].request is mods["agg"].requests[0]
    assert by_who[(3, 0)].request.max_tokens == 9  # the caller's override, aggregator only
    assert by_who[(1, 0)].request.max_tokens is None
    # Proposer text streams as MemberDelta and adds up to the member's answer.
    layer1 = next(e for e in seen if isinstance(e, LayerFinished)).result
    a_text = "".join(
        e.text for e in seen if isinstance(e, MemberDelta) and e.layer == 1 and e.index == 0
    )
    assert a_text == layer1.members[0].output == "a: What is MoA?"
    kinds = [type(e).__name__ for e in seen]
    assert kinds.index("LayerStarted") < kinds.index("MemberStarted") < kinds.index("MemberDelta")
    assert kinds.index("MemberDelta") < kinds.index("MemberFinished")


async def test_time_to_first_token_is_recorded_for_every_call_when_asked() -> None:
    async with Stack(two_layers(), models=models(delay_s=0.05)) as stack:
        result = await stack.run(CONV, member_ttft=True)
    for call in result.calls():
        assert call.ttft_s is not None and 0.04 <= call.ttft_s <= call.latency_s
        assert call.attempts[-1].ttft_s == call.ttft_s


class StreamOrPlain(Model):
    """Answers either way, and counts which way it was asked."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.streamed = self.plain = 0

    async def stream(self, request: ChatRequest) -> AsyncIterator[Chunk]:
        self.streamed += 1
        yield Chunk(text=f"{self.name} says hi")
        yield Chunk(finish_reason="stop")

    async def complete(self, request: ChatRequest) -> Completion:
        self.plain += 1
        return Completion(text=f"{self.name} says hi", finish_reason="stop")


async def test_a_member_streams_only_when_something_reads_its_stream() -> None:
    def counted() -> dict[str, StreamOrPlain]:
        return {n: StreamOrPlain(n) for n in ("a", "b", "c", "agg")}

    # Nobody reads proposer text, and the answer is not streamed: every call is plain.
    quiet = counted()
    async with Stack(two_layers(), models=quiet) as stack:
        result = await stack.run(CONV)
    assert {n: (m.streamed, m.plain) for n, m in quiet.items()} == {n: (0, 1) for n in quiet}
    assert all(c.ttft_s is None for c in result.calls())
    # The answer streams to its reader; proposer deltas are not wanted (the server's way).
    served = counted()
    async with (
        Stack(two_layers(), models=served) as stack,
        aclosing(stack.events(CONV, member_deltas=False)) as events,
    ):
        async for _ in events:
            pass
    assert (served["agg"].streamed, served["agg"].plain) == (1, 0)
    assert all((served[n].streamed, served[n].plain) == (0, 1) for n in ("a", "b", "c"))
    # An observer that wants proposer deltas gets them: proposers stream.
    watched = counted()
    async with Stack(two_layers(), models=watched) as stack:
        await stack.run(CONV, observers=[lambda event: None])
    assert all(watched[n].streamed == 1 for n in ("a", "b", "c"))


async def test_started_s_is_the_calls_own_start() -> None:
    async with Stack(two_layers(), models=models(delay_s=0.05)) as stack:
        result = await stack.run(CONV)
    layer1, layer2 = result.layers
    agg = result.aggregators[0]
    assert layer2.members[0].started_s >= max(m.started_s + m.latency_s for m in layer1.members)
    assert agg.started_s >= layer2.members[0].started_s + layer2.members[0].latency_s
    assert agg.started_s == agg.attempts[0].started_s


async def test_async_observer_objects_are_awaited_in_order() -> None:
    class Sink:
        def __init__(self) -> None:
            self.kinds: list[str] = []

        async def __call__(self, event: Event) -> None:
            self.kinds.append(type(event).__name__)

    sink = Sink()
    async with Stack(two_layers(), models=models()) as stack:
        await stack.run(CONV, observers=[sink])
    assert sink.kinds[0] == "RunStarted" and sink.kinds[-1] == "RunFinished"
    assert sink.kinds.count("LayerStarted") == 2 and "AggregatorStarted" in sink.kinds


async def test_a_raising_observer_is_detached_and_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls: list[str] = []

    def broken(event: Event) -> None:
        calls.append(type(event).__name__)
        if isinstance(event, LayerStarted):
            raise RuntimeError("sink is down")

    good: list[Event] = []
    with caplog.at_level(logging.ERROR, logger="moakit.engine"):
        async with Stack(two_layers(), models=models()) as stack:
            result = await stack.run(CONV, observers=[broken, good.append])
    assert result.final == "agg: What is MoA?"
    assert calls == ["RunStarted", "LayerStarted"]  # detached after raising
    assert isinstance(good[-1], RunFinished)  # the others still see everything
    assert len([r for r in caplog.records if "detached" in r.getMessage()]) == 1


async def test_non_streaming_run_commits_the_answer_as_one_delta() -> None:
    seen: list[Event] = []
    async with Stack(two_layers(), models=models()) as stack:
        result = await stack.run(CONV, observers=[seen.append])
        streamed: list[Event] = []
        await stack.run(CONV, observers=[streamed.append], streaming=True)
    deltas = [e.text for e in seen if isinstance(e, TextDelta)]
    assert deltas == [result.final]
    live = [e.text for e in streamed if isinstance(e, TextDelta)]
    assert len(live) > 1 and "".join(live) == result.final
    agg_started = next(e for e in seen if isinstance(e, AggregatorStarted))
    assert (agg_started.index, agg_started.label, agg_started.references) == (0, "agg", 1)
    assert isinstance(next(e for e in seen if isinstance(e, MemberFinished)), MemberFinished)


async def test_events_without_observers_still_yield_live_events() -> None:
    async with Stack(two_layers(), models=models()) as stack:
        kinds = {type(e).__name__ async for e in stack.events(CONV)}
        watched: list[Event] = []
        observed = await stack.run(CONV, observers=[watched.append])
        unobserved = await stack.run(CONV)
    assert {"MemberStarted", "MemberDelta"} <= kinds
    # A run nobody watches skips building those events, and nothing else changes.
    assert observed.final == unobserved.final
    assert observed.llm_calls == unobserved.llm_calls == 4
    assert [m.output for m in observed.calls()] == [m.output for m in unobserved.calls()]
    # The doubles have no plain request of their own (complete() collects the stream), so
    # every call is read as a stream, watched or not, and its time to first token is known.
    assert [m.ttft_s is not None for m in observed.calls()] == [True] * 4
    assert [m.ttft_s is not None for m in unobserved.calls()] == [True] * 4


async def test_member_deltas_off_builds_no_proposer_deltas_and_changes_nothing_else() -> None:
    async with Stack(two_layers(), models=models()) as stack:
        with_deltas = [e async for e in stack.events(CONV, run_id="r")]
        without = [e async for e in stack.events(CONV, run_id="r", member_deltas=False)]
    assert any(isinstance(e, MemberDelta) for e in with_deltas)
    assert not any(isinstance(e, MemberDelta) for e in without)
    kept = [type(e).__name__ for e in with_deltas if not isinstance(e, MemberDelta)]
    assert [type(e).__name__ for e in without] == kept
    final_with = next(e for e in with_deltas if isinstance(e, RunFinished)).result
    final_without = next(e for e in without if isinstance(e, RunFinished)).result
    assert final_without.final == final_with.final
    assert [m.output for m in final_without.calls()] == [m.output for m in final_with.calls()]
    # Time to first token is still measured: these doubles have no cheaper plain request, so
    # their calls are read as streams, unseen (StreamOrPlain below has one).
    assert all(m.ttft_s is not None for m in final_without.calls())
    assert all(m.ttft_s is not None for m in final_with.calls())
