"""The staircase strategy with scripted members: what each aggregator step sees, the stream's
continuity, members dropped mid-answer, the stream rule, cancellation, config checks."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from contextlib import aclosing
from pathlib import Path
from typing import Any

import pytest

from moakit import ConfigError, LayerFailed, Stack, parse_config
from moakit.errors import AggregatorFailed, DeadlineExceeded, ModelCallError
from moakit.events import TextDelta
from moakit.messages import Message, to_openai
from moakit.models.base import ChatRequest, Chunk, Model, Usage
from moakit.models.profile import ModelProfile
from moakit.prompts import AGGREGATE_AND_SYNTHESIZE
from moakit.result import Result
from moakit.testing.models import echo_model

CONV = [{"role": "user", "content": "Tell me a story."}]


class Scripted(Model):
    """Streams a fixed answer word by word (``per_token_s`` apart), honouring ``max_tokens``
    (finish "length") and ``prefill`` (continues after the words already written).
    ``fail_at``: raise after that many words of the whole answer have been written."""

    profile = ModelProfile(prefill=True)

    def __init__(
        self,
        name: str,
        words: int,
        *,
        per_token_s: float = 0.0,
        fail_at: int | None = None,
        log: list[str] | None = None,
    ) -> None:
        self.name = name
        self.words = [f"{name}{i}" for i in range(words)]
        self.per_token_s = per_token_s
        self.fail_at = fail_at
        self.requests: list[ChatRequest] = []
        # Shared by several models: every word yielded and every request, in order.
        self.log = log if log is not None else []
        self.open = 0  # streams started and not yet closed

    async def stream(self, request: ChatRequest) -> AsyncIterator[Chunk]:
        self.open += 1
        try:
            async for chunk in self._stream(request):
                yield chunk
        finally:
            self.open -= 1

    async def _stream(self, request: ChatRequest) -> AsyncIterator[Chunk]:
        self.requests.append(request)
        self.log.append(f"request:{self.name}")
        start = len(request.prefill.split()) if request.prefill else 0
        end = len(self.words)
        if request.max_tokens is not None:
            end = min(end, start + request.max_tokens)
        for i in range(start, end):
            if self.fail_at is not None and i == self.fail_at:
                raise ModelCallError(f"{self.name} broke", kind="http", status=500)
            if self.per_token_s:
                await asyncio.sleep(self.per_token_s)
            self.log.append(self.name)
            yield Chunk(text=self.words[i] if i == 0 else " " + self.words[i])
        finish = "length" if end < len(self.words) else "stop"
        yield Chunk(finish_reason=finish, usage=Usage(completion_tokens=end - start))


def staircase(
    layers: list[list[str]],
    aggregator: str = "agg",
    chunk: int = 2,
    fallbacks: tuple[str, ...] = (),
    schedule: str = "lockstep",
    **extra: Any,
) -> Any:
    return parse_config(
        {
            "layers": [[{"model": m, "retries": 0} for m in layer] for layer in layers],
            "aggregator": {
                "model": aggregator,
                "retries": 0,
                "fallbacks": [{"model": f, "retries": 0} for f in fallbacks],
            },
            "strategy": "staircase",
            "staircase": {"chunk_tokens": chunk, "schedule": schedule},
            # The paper's block, so a test can read which chunks each step saw.
            "references": {"formatter": "paper"},
            **extra,
        }
    )


def prefix(model: Scripted, chunks: int, chunk: int) -> str:
    return " ".join(model.words[: chunks * chunk])


async def streamed(stack: Stack, **kwargs: Any) -> tuple[Result, str]:
    deltas: list[str] = []
    result: Result | None = None
    async with aclosing(stack.events(CONV, **kwargs)) as events:
        async for event in events:
            if isinstance(event, TextDelta):
                deltas.append(event.text)
            result = getattr(event, "result", result)
    assert result is not None
    return result, "".join(deltas)


def assert_continuous(result: Result, text: str, agg: Scripted) -> None:
    """No repeated or lost text: the deltas are the final answer, each step continued
    exactly the text before it, and the answer is the aggregator's whole script."""
    assert text == result.final == " ".join(agg.words)
    out = result.aggregator
    assert out is not None and out.output == result.final
    marks = [0, *(s.text_chars for s in out.steps)]
    assert marks == sorted(marks) and marks[-1] == len(text)
    for request, written in zip(agg.requests, marks[:-1], strict=True):
        assert (request.prefill or "") == text[:written]


async def test_each_step_sees_exactly_the_chunks_that_had_arrived() -> None:
    a, b = Scripted("a", 8, per_token_s=0.02), Scripted("b", 8, per_token_s=0.02)
    agg = Scripted("agg", 12)
    async with Stack(staircase([["a", "b"]]), models={"a": a, "b": b, "agg": agg}) as stack:
        result, text = await streamed(stack)
    assert_continuous(result, text, agg)
    steps = result.aggregator.steps  # type: ignore[union-attr]
    assert len(steps) == len(agg.requests) >= 2 and steps[-1].final
    assert not any(s.final for s in steps[:-1])
    for k, (step, request) in enumerate(zip(steps, agg.requests, strict=True), start=1):
        if step.final:
            seen = {"a": " ".join(a.words), "b": " ".join(b.words)}
            assert request.max_tokens is None
        else:
            seen = {"a": prefix(a, k, 2), "b": prefix(b, k, 2)}
            assert request.max_tokens == 2
        assert step.refs_chars_seen == {label: len(t) for label, t in seen.items()}
        # The request carries those chunks, and nothing more, as its references.
        block = f"{AGGREGATE_AND_SYNTHESIZE}\n1. {seen['a']}\n2. {seen['b']}"
        assert request.messages[0] == Message.system(block)
        assert to_openai(request.messages[1:]) == CONV
    # The aggregator started long before the proposers were done: its first step saw 2 words.
    assert steps[0].refs_chars_seen == {"a": len("a0 a1"), "b": len("b0 b1")}


async def test_each_step_sees_the_whole_chunks_that_had_arrived_and_no_more() -> None:
    log: list[str] = []
    a = Scripted("a", 60, per_token_s=0.004, log=log)  # three times faster than b
    b = Scripted("b", 60, per_token_s=0.012, log=log)
    agg = Scripted("agg", 8, log=log)  # done (on its own) before the proposers
    async with Stack(staircase([["a", "b"]]), models={"a": a, "b": b, "agg": agg}) as stack:
        result, text = await streamed(stack)
    assert_continuous(result, text, agg)
    steps = result.aggregator.steps  # type: ignore[union-attr]
    assert len(steps) == 4 and not any(s.final for s in steps)
    for k, step in enumerate(steps, start=1):
        before = log[: [i for i, e in enumerate(log) if e == "request:agg"][k - 1]]
        arrived = {m.name: before.count(m.name) for m in (a, b)}
        # Lockstep: step k started once the slower member had k chunks of 2 words (whatever
        # arrived since, up to the request, is seen too, in whole chunks).
        assert arrived["b"] >= 2 * k
        seen = {m.name: " ".join(m.words[: arrived[m.name] // 2 * 2]) for m in (a, b)}
        assert step.refs_chars_seen == {name: len(t) for name, t in seen.items()}
        block = f"{AGGREGATE_AND_SYNTHESIZE}\n1. {seen['a']}\n2. {seen['b']}"
        assert agg.requests[k - 1].messages[0] == Message.system(block)


async def test_greedy_schedule_steps_whenever_a_chunk_arrived() -> None:
    a = Scripted("a", 40, per_token_s=0.005)
    b = Scripted("b", 6, per_token_s=0.05)  # ten times slower
    agg = Scripted("agg", 60)
    config = staircase([["a", "b"]], schedule="greedy")
    async with Stack(config, models={"a": a, "b": b, "agg": agg}) as stack:
        result, text = await streamed(stack)
    assert_continuous(result, text, agg)
    first, second = result.aggregator.steps[:2]  # type: ignore[union-attr]
    # Both start once b has its first chunk; the second does not wait for b's second chunk
    # (lockstep would): a new chunk of a is enough.
    assert first.refs_chars_seen["b"] == second.refs_chars_seen["b"] == len("b0 b1")
    assert second.refs_chars_seen["a"] > first.refs_chars_seen["a"]


async def test_middle_layer_writes_in_steps_and_feeds_the_aggregator() -> None:
    a, c = Scripted("a", 8, per_token_s=0.02), Scripted("c", 6, per_token_s=0.005)
    agg = Scripted("agg", 9)
    async with Stack(staircase([["a"], ["c"]]), models={"a": a, "c": c, "agg": agg}) as stack:
        result, text = await streamed(stack)
    assert_continuous(result, text, agg)
    middle = result.layers[1].members[0]
    assert middle.output == " ".join(c.words) and len(middle.steps) >= 2
    marks = [0, *(s.text_chars for s in middle.steps)]
    for request, written in zip(c.requests, marks[:-1], strict=True):
        assert (request.prefill or "") == middle.output[:written]
    # The aggregator reads layer 2 only, chunk by chunk, as it is written.
    for step in result.aggregator.steps:  # type: ignore[union-attr]
        assert set(step.refs_chars_seen) == {"c"}


async def test_proposer_failing_mid_answer_is_dropped_from_later_steps() -> None:
    a = Scripted("a", 8, per_token_s=0.02)
    b = Scripted("b", 8, per_token_s=0.02, fail_at=3)
    agg = Scripted("agg", 12)
    async with Stack(staircase([["a", "b"]]), models={"a": a, "b": b, "agg": agg}) as stack:
        result, text = await streamed(stack)
    assert_continuous(result, text, agg)
    failed = result.layers[0].members[1]
    assert failed.error is not None and "b broke" in failed.error and not failed.ok
    assert len(b.requests) == 1  # text was out: no second version of b
    steps = result.aggregator.steps  # type: ignore[union-attr]
    assert steps[0].refs_chars_seen == {"a": len("a0 a1"), "b": len("b0 b1")}
    for step, request in zip(steps[1:], agg.requests[1:], strict=True):
        assert set(step.refs_chars_seen) == {"a"}
        assert "b0" not in request.messages[0].text


async def test_aggregator_failure_after_text_is_final_and_keeps_what_was_sent() -> None:
    a = Scripted("a", 8, per_token_s=0.02)
    agg, backup = Scripted("agg", 12, fail_at=3), Scripted("backup", 5)
    config = staircase([["a"]], fallbacks=("backup",))
    models = {"a": a, "agg": agg, "backup": backup}
    deltas: list[str] = []
    async with Stack(config, models=models) as stack:
        with pytest.raises(AggregatorFailed) as caught:
            async with aclosing(stack.events(CONV)) as events:
                async for event in events:
                    if isinstance(event, TextDelta):
                        deltas.append(event.text)
    assert caught.value.result is not None
    assert "".join(deltas) == caught.value.result.final == "agg0 agg1 agg2"
    assert backup.requests == []  # no fallback once text is out


async def test_fallback_takes_over_before_any_text() -> None:
    a = Scripted("a", 6, per_token_s=0.02)
    agg, backup = Scripted("agg", 6, fail_at=0), Scripted("backup", 7)
    config = staircase([["a"]], fallbacks=("backup",))
    async with Stack(config, models={"a": a, "agg": agg, "backup": backup}) as stack:
        result, text = await streamed(stack)
    assert [o.label for o in result.aggregators] == ["agg", "backup"]
    assert_continuous(result, text, backup)


async def test_without_streaming_each_step_is_sent_once_complete() -> None:
    a = Scripted("a", 8, per_token_s=0.02)
    agg = Scripted("agg", 10)
    deltas: list[str] = []
    requests_at_delta: list[int] = []
    result: Result | None = None
    async with (
        Stack(staircase([["a"]]), models={"a": a, "agg": agg}) as stack,
        aclosing(stack.events(CONV, streaming=False)) as events,
    ):
        async for event in events:
            if isinstance(event, TextDelta):
                deltas.append(event.text)
                requests_at_delta.append(len(agg.requests))
            result = getattr(event, "result", result)
    assert result is not None
    text = "".join(deltas)
    assert_continuous(result, text, agg)
    steps = result.aggregator.steps  # type: ignore[union-attr]
    assert len(steps) >= 2
    # One delta per step, holding exactly what that step wrote...
    marks = [0, *(s.text_chars for s in steps)]
    assert deltas == [text[i:j] for i, j in itertools.pairwise(marks)]
    # ...sent once the step completed: before the next step's request, never during it.
    assert requests_at_delta == list(range(1, len(steps) + 1))


async def test_cancelling_the_stream_stops_every_call() -> None:
    a, b = Scripted("a", 400, per_token_s=0.01), Scripted("b", 400, per_token_s=0.01)
    agg = Scripted("agg", 400, per_token_s=0.01)
    models = {"a": a, "b": b, "agg": agg}
    async with (
        Stack(staircase([["a", "b"]]), models=models) as stack,
        aclosing(stack.events(CONV)) as events,
    ):
        async for event in events:
            if isinstance(event, TextDelta):
                break  # the user goes away after the first words
    # Nothing keeps running: every model stream was closed when the consumer left.
    assert [a.open, b.open, agg.open] == [0, 0, 0]
    assert len(a.requests) == len(b.requests) == 1


async def test_an_unwatched_run_answers_the_same() -> None:
    a, b = Scripted("a", 8, per_token_s=0.01), Scripted("b", 8, per_token_s=0.01)
    agg = Scripted("agg", 12)
    async with Stack(staircase([["a", "b"]]), models={"a": a, "b": b, "agg": agg}) as stack:
        result = await stack.run(CONV)
    assert result.final == " ".join(agg.words)
    assert len(result.aggregator.steps) == len(agg.requests) >= 2  # type: ignore[union-attr]
    assert [m.output for m in result.layers[0].members] == [" ".join(a.words), " ".join(b.words)]


async def test_an_aggregator_without_prefill_is_a_config_error() -> None:
    models: dict[str, Model] = {"a": echo_model("a"), "agg": echo_model("agg")}
    with pytest.raises(ConfigError, match="cannot continue a partial answer") as caught:
        Stack(staircase([["a"]]), models=models)
    assert caught.value.field == "aggregator"
    models = {"a": echo_model("a"), "c": echo_model("c")}
    models["agg"] = Scripted("agg", 3)
    with pytest.raises(ConfigError) as caught:
        Stack(staircase([["a"], ["c"]]), models=models)
    assert caught.value.field == "layers.1.members.0"
    # The layered strategy has no such need.
    Stack(
        parse_config({"layers": [[{"model": "a"}]], "aggregator": {"model": "agg"}}),
        models={"a": echo_model("a"), "agg": echo_model("agg")},
    )


async def test_an_answer_complete_early_cuts_the_proposers() -> None:
    a = Scripted("a", 200, per_token_s=0.01)
    agg = Scripted("agg", 3)  # stops on its own in its second step
    async with Stack(staircase([["a"]]), models={"a": a, "agg": agg}) as stack:
        result, text = await streamed(stack)
    assert_continuous(result, text, agg)
    cut = result.layers[0].members[0]
    assert cut.cancelled and cut.error == "cancelled: answer complete"
    assert not result.aggregator.steps[-1].final  # type: ignore[union-attr]


async def test_straggler_is_cut_and_the_rest_answer() -> None:
    a, b = Scripted("a", 6, per_token_s=0.01), Scripted("b", 6, per_token_s=0.01)
    slow = Scripted("c", 6, per_token_s=5.0)  # never reaches its first chunk in time
    agg = Scripted("agg", 5)
    config = staircase([["a", "b", "c"]], min_successful=2, straggler={"grace_s": 0.05})
    models = {"a": a, "b": b, "c": slow, "agg": agg}
    async with Stack(config, models=models) as stack:
        result, text = await asyncio.wait_for(streamed(stack), 3)
    assert_continuous(result, text, agg)
    members = result.layers[0].members
    assert [m.ok for m in members] == [True, True, False]
    assert members[2].error == "cancelled: straggler cut-off"
    assert set(result.aggregator.steps[-1].refs_chars_seen) == {"a", "b"}  # type: ignore[union-attr]


async def test_deadline_cuts_proposers_and_keeps_the_text_already_sent() -> None:
    a = Scripted("a", 400, per_token_s=0.01)
    agg = Scripted("agg", 400)
    config = staircase([["a"]], deadline_s=0.5)
    deltas: list[str] = []
    async with Stack(config, models={"a": a, "agg": agg}) as stack:
        with pytest.raises(DeadlineExceeded) as caught:
            async with aclosing(stack.events(CONV)) as events:
                async for event in events:
                    if isinstance(event, TextDelta):
                        deltas.append(event.text)
    result = caught.value.result
    assert result is not None and deltas and result.final == "".join(deltas)
    # The proposer's own timeout is clipped by the proposers' share of the deadline.
    cut = result.layers[0].members[0]
    assert not cut.ok and cut.error is not None and cut.error.startswith("deadline")


async def test_a_traced_staircase_run_records_every_call(tmp_path: Path) -> None:
    from moakit.trace import TraceRecorder, TraceStore, traced_run

    a, agg = Scripted("a", 8, per_token_s=0.01), Scripted("agg", 10)
    with TraceStore(tmp_path / "t.db") as store:
        async with Stack(staircase([["a"]]), models={"a": a, "agg": agg}) as stack:
            result = await traced_run(stack, CONV, TraceRecorder(store, stack=stack), run_id="s")
        assert store.flush()
        record = store.get("s")
    assert record is not None
    outputs = {c.label: c.output for c in record.calls}
    assert outputs == {"a": " ".join(a.words), "agg": " ".join(agg.words)}
    # The trace keeps, per aggregator step, which reference chunks it had seen.
    stored = next(c for c in record.calls if c.label == "agg").steps
    assert result.aggregator is not None and len(stored) == len(result.aggregator.steps) > 1
    assert stored == [step.model_dump(mode="json") for step in result.aggregator.steps]
    assert stored[-1]["final"] and stored[0]["refs_chars_seen"]["a"] < len(outputs["a"])


async def test_a_layer_missing_its_quorum_fails_the_query_keeping_the_text_sent() -> None:
    a = Scripted("a", 20, per_token_s=0.01)
    b = Scripted("b", 20, per_token_s=0.01, fail_at=5)
    agg = Scripted("agg", 40)
    config = staircase([["a", "b"]], min_successful=2)
    deltas: list[str] = []
    async with Stack(config, models={"a": a, "b": b, "agg": agg}) as stack:
        with pytest.raises(LayerFailed) as caught:
            async with aclosing(stack.events(CONV)) as events:
                async for event in events:
                    if isinstance(event, TextDelta):
                        deltas.append(event.text)
    result = caught.value.result
    assert result is not None and deltas  # the aggregator had started writing
    assert result.final == "".join(deltas)
    assert [m.ok for m in result.layers[0].members] == [True, False]
    assert agg.open == a.open == 0


async def test_defenses_act_on_every_step_and_each_step_records_it() -> None:
    a, b = Scripted("a", 8, per_token_s=0.02), Scripted("b", 8, per_token_s=0.02)
    c = Scripted("c", 8, per_token_s=0.02)
    agg = Scripted("agg", 12)
    config = staircase(
        [["a", "b", "c"]],
        references={
            "formatter": "fenced",
            "transforms": ["trust"],
            "trust": {"mode": "label"},
        },
    )
    data = config.model_dump(exclude_unset=True)
    data["layers"][0]["members"][2]["trust"] = "untrusted"
    models = {"a": a, "b": b, "c": c, "agg": agg}
    async with Stack(parse_config(data), models=models) as stack:
        result, text = await streamed(stack)
    assert_continuous(result, text, agg)
    steps = result.aggregator.steps  # type: ignore[union-attr]
    assert len(steps) >= 2
    for request in agg.requests:  # every step's references are fenced and c's labelled
        system = str(request.messages[0].text)
        assert "BEGIN response 3" in system and "untrusted" in system
        assert "\n1. " not in system  # never the paper's bare numbering
    assert all(s.defenses == ["trust", "fence"] for s in steps)
    recorded = [(d.defense, d.step, d.layer) for d in result.defenses]
    expected = [(name, k, 2) for k in range(1, len(steps) + 1) for name in ("trust", "fence")]
    assert recorded == expected
