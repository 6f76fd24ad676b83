"""The recorder driven by the engine's own events (``moakit.events``): run_id/ts on each,
RunStarted, MemberStarted with its request and the references it was shown,
AggregatorAttemptFailed, RunFailed."""

from __future__ import annotations

from pathlib import Path

import pytest

from moakit.events import (
    AggregatorAttemptFailed,
    AggregatorStarted,
    LayerFinished,
    LayerStarted,
    MemberDelta,
    MemberFinished,
    MemberStarted,
    RunFailed,
    RunFinished,
    RunStarted,
)
from moakit.messages import to_openai
from moakit.models.base import ChatRequest, Usage
from moakit.references import Reference
from moakit.result import Attempt, LayerResult, MemberOutput, Result
from moakit.trace import TraceRecorder, TraceStore

T0 = 1_800_000_000.0


def member(layer: int, index: int, output: str | None, error: str | None = None) -> MemberOutput:
    return MemberOutput(
        layer=layer,
        index=index,
        label=f"m{layer}{index}",
        provider="openai",
        model=f"model-{index}",
        output=output,
        error=error,
        started_s=0.5,
        latency_s=1.25,
        usage=Usage(prompt_tokens=10, completion_tokens=5),
        attempts=[Attempt(number=1, started_s=0.5, latency_s=1.25, error=error)],
    )


def started(
    run_id: str,
    ts: float,
    layer: int,
    index: int,
    label: str,
    model: str,
    attempt: int,
    request: ChatRequest,
    references: tuple[Reference, ...] = (),
) -> MemberStarted:
    return MemberStarted(
        run_id=run_id,
        ts=ts,
        layer=layer,
        index=index,
        label=label,
        provider="openai",
        model=model,
        attempt=attempt,
        request=request,
        references=references,
    )


def test_engine_events_of_two_interleaved_runs(tmp_path: Path) -> None:
    recorder = TraceRecorder(TraceStore(tmp_path / "t.db"))
    store = recorder.sinks[0]
    assert isinstance(store, TraceStore)
    req = ChatRequest(messages=[{"role": "user", "content": "x"}], temperature=0.7)
    agg_req = ChatRequest(
        messages=[{"role": "system", "content": "refs: 1. a"}, {"role": "user", "content": "x"}],
        max_tokens=99,
    )
    ok_a, ok_b = member(1, 0, "answer A"), member(1, 1, "answer B")
    failed_agg = member(2, 0, None, "http 503: busy")
    layer = LayerResult(layer=1, members=[ok_a], latency_s=1.25, min_successful=1)
    shown = (Reference(text="answer A", label="m10", model="model-0", layer=1, index=0),)
    good_agg = member(2, 0, "final")
    events = [
        RunStarted(run_id="r1", ts=T0, stack="stack-one", config_hash="sha256:engine-hash"),
        RunStarted(run_id="r2", ts=T0 + 1, stack="stack-two", config_hash="sha256:other"),
        LayerStarted(run_id="r1", ts=T0, layer=1, members=["m10"]),
        started("r1", T0 + 0.5, 1, 0, "m10", "model-0", 1, req),
        started("r2", T0 + 1.5, 1, 1, "m11", "model-1", 1, req),
        MemberDelta(run_id="r1", ts=T0 + 0.6, layer=1, index=0, text="ans"),
        MemberFinished(run_id="r2", ts=T0 + 2.75, output=ok_b),
        MemberFinished(run_id="r1", ts=T0 + 1.75, output=ok_a),
        LayerFinished(run_id="r1", ts=T0 + 1.75, layer=1, result=layer),
        AggregatorStarted(
            run_id="r1", ts=T0 + 1.8, index=0, label="agg", model="model-0", references=1
        ),
        started("r1", T0 + 1.8, 2, 0, "agg", "model-0", 1, agg_req, shown),
        AggregatorAttemptFailed(
            run_id="r1", ts=T0 + 2.0, failed=failed_agg, will_retry=True, had_text=False
        ),
        started("r1", T0 + 2.1, 2, 0, "agg", "model-0", 2, agg_req, shown),
        RunFinished(
            run_id="r1",
            ts=T0 + 3,
            result=Result(
                stack="stack-one",
                final="final",
                layers=[layer],
                aggregators=[good_agg],
                latency_s=3.0,
            ),
        ),
        RunFailed(
            run_id="r2",
            ts=T0 + 4,
            error="every aggregator failed",
            result=Result(
                stack="stack-two", layers=[], latency_s=3.0, error="every aggregator failed"
            ),
        ),
    ]
    for event in events:
        recorder(event)
    assert recorder.active_runs == 0
    assert store.flush()
    r1, r2 = store.get("r1"), store.get("r2")
    assert r1 is not None and r2 is not None
    assert (r1.query.status, r1.query.stack_name, r1.query.config_hash) == (
        "complete",
        "stack-one",
        "sha256:engine-hash",
    )
    assert r1.query.start_time == T0 and r1.query.output == "final"
    calls = {(c.layer, c.index): c for c in r1.calls}
    assert sorted(calls) == [(1, 0), (2, 0)]
    # MemberStarted's request is the call's exact input and parameters.
    assert calls[(1, 0)].input == [{"role": "user", "content": "x"}]
    assert calls[(1, 0)].model_parameters == {"temperature": 0.7}
    agg = calls[(2, 0)]
    assert agg.input == to_openai(agg_req.messages) and agg.model_parameters == {"max_tokens": 99}
    assert agg.output == "final" and agg.status_message is None  # the retry's success won
    assert [r.text for r in agg.references] == ["answer A"]
    # The retry's MemberStarted does not move the call's start.
    assert agg.start_time == T0 + 0.5  # the query's start + MemberOutput.started_s
    assert (r2.query.status, r2.query.status_message) == ("failed", "every aggregator failed")
    assert [c.label for c in r2.calls] == ["m11"]
    store.close()


def test_events_without_a_started_run_are_ignored(tmp_path: Path) -> None:
    with TraceStore(tmp_path / "t.db") as store:
        recorder = TraceRecorder(store)
        recorder(MemberFinished(run_id="ghost", ts=T0, output=member(1, 0, "x")))
        assert store.flush()
        assert store.list_queries() == []


class CountingSink:
    def __init__(self) -> None:
        self.calls: list[str] = []
        self.finished: list[str] = []

    def query_started(self, query: object) -> None:
        pass

    def call_finished(self, call: object) -> None:
        self.calls.append(getattr(call, "label", ""))

    def query_finished(self, query: object, calls: object) -> None:
        self.finished.append(getattr(query, "status", ""))


async def test_traced_run_records_each_call_once_through_the_engine_observers() -> None:
    """traced_run hands the recorder to Stack.events as an observer (it never feeds it a second
    time), and other observers passed along see the same run."""
    from moakit import Stack
    from moakit.testing.models import echo_model
    from moakit.trace import traced_run
    from trace_helpers import two_layer_config

    seen: list[str] = []
    sink = CountingSink()
    models = {n: echo_model(n) for n in ("a", "b", "c", "agg")}
    async with Stack(two_layer_config(), models=models) as stack:
        result = await traced_run(
            stack,
            [{"role": "user", "content": "q"}],
            TraceRecorder(sink, stack=stack),
            observers=[lambda event: seen.append(type(event).__name__)],
        )
    assert result.final == "agg: q"
    assert seen.count("MemberFinished") == 3 and seen[-1] == "RunFinished"
    assert sorted(sink.calls) == ["a", "agg", "b", "c"]  # once each, not twice
    assert sink.finished == ["complete"]


async def test_the_engines_config_hash_is_the_stored_one(tmp_path: Path) -> None:
    """A stack hashes its own config (and says so in RunStarted): the query is stored under
    that hash, so the query and its config stay joined."""
    from moakit import Stack
    from moakit.testing.models import echo_model
    from moakit.trace import traced_run
    from trace_helpers import two_layer_config

    models = {n: echo_model(n) for n in ("a", "b", "c", "agg")}
    with TraceStore(tmp_path / "h.db") as store:
        async with Stack(two_layer_config(), models=models) as stack:
            stack.config_hash = "0123abcd-engine-hash"  # type: ignore[attr-defined]
            await traced_run(
                stack,
                [{"role": "user", "content": "q"}],
                TraceRecorder(store, stack=stack),
                run_id="h",
            )
        assert store.flush()
        record = store.get("h")
    assert record is not None and record.query.config_hash == "0123abcd-engine-hash"
    assert record.query.stack_config is not None
    assert record.query.stack_config["name"] == "trace-test"


def test_runs_that_never_end_are_not_held_forever(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import moakit.trace.recorder as recorder_module

    monkeypatch.setattr(recorder_module, "MAX_ACTIVE_RUNS", 3)
    with TraceStore(tmp_path / "t.db") as store:
        recorder = TraceRecorder(store)
        for i in range(5):
            recorder(RunStarted(run_id=f"r{i}", ts=T0 + i, stack="s", config_hash="h"))
        assert recorder.active_runs == 3
        assert store.flush()
        assert {q.status for q in store.list_queries()} == {"incomplete"}
