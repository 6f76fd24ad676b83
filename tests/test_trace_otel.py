from __future__ import annotations

import json
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from moakit.trace import TraceRecorder, TraceStore, traced_run
from moakit.trace.otel import OtelSink, otel_sink_from_env
from trace_helpers import echo_stack, failing, fixed

CONV = [{"role": "user", "content": "What is MoA?"}]


def provider() -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    tp = TracerProvider()
    tp.add_span_processor(SimpleSpanProcessor(exporter))
    return tp, exporter


async def run(sink: OtelSink, tmp_path: Path, **models: object) -> tuple[TraceStore, str]:
    store = TraceStore(tmp_path / "otel.db")
    stack, _ = echo_stack(**models)  # type: ignore[arg-type]
    async with stack:
        await traced_run(stack, CONV, TraceRecorder(store, sink, stack=stack), run_id="otel-run")
    assert store.flush()
    return store, "otel-run"


def by_name(spans: tuple[ReadableSpan, ...]) -> dict[str, ReadableSpan]:
    return {s.name: s for s in spans}


async def test_one_span_per_query_layer_and_call(tmp_path: Path) -> None:
    tp, exporter = provider()
    store, run_id = await run(OtelSink(tp), tmp_path, b=failing("b", "bad gateway"))
    spans = by_name(exporter.get_finished_spans())
    assert sorted(spans) == sorted(
        [
            "moa trace-test",
            "layer 1",
            "layer 2",
            "aggregator",
            "proposer a",
            "proposer b",
            "proposer c",
            "aggregator agg",
        ]
    )
    root = spans["moa trace-test"]
    assert root.parent is None
    trace_id = root.context.trace_id
    assert all(s.context.trace_id == trace_id for s in spans.values())
    for layer in ("layer 1", "layer 2", "aggregator"):
        assert spans[layer].parent is not None
        assert spans[layer].parent.span_id == root.context.span_id
        assert spans[layer].attributes["openinference.span.kind"] == "CHAIN"
    assert spans["proposer a"].parent.span_id == spans["layer 1"].context.span_id  # type: ignore[union-attr]
    assert spans["aggregator agg"].parent.span_id == spans["aggregator"].context.span_id  # type: ignore[union-attr]

    record = store.get(run_id)
    assert record is not None
    calls = {c.label: c for c in record.calls}
    agg = spans["aggregator agg"].attributes
    assert agg["openinference.span.kind"] == "LLM"
    assert agg["llm.model_name"] == agg["gen_ai.request.model"] == "agg"
    assert agg["llm.token_count.prompt"] == calls["agg"].prompt_tokens > 0
    assert agg["gen_ai.usage.output_tokens"] == calls["agg"].completion_tokens
    assert json.loads(str(agg["input.value"])) == calls["agg"].input
    assert agg["output.value"] == calls["agg"].output == record.query.output
    assert agg["llm.input_messages.0.message.role"] == "system"
    assert agg["moakit.run_id"] == run_id
    # Span times are the calls' recorded times.
    assert spans["proposer c"].start_time == int(calls["c"].start_time * 1e9)
    assert root.attributes["llm.token_count.total"] == record.query.total_tokens
    assert root.attributes["output.value"] == record.query.output

    failed = spans["proposer b"]
    assert failed.status.status_code == StatusCode.ERROR
    assert "bad gateway" in str(failed.status.description)
    assert "output.value" not in failed.attributes
    assert root.status.status_code == StatusCode.UNSET
    store.close()


async def test_without_prompts_and_without_secrets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    canary = "sk-otel-canary-99887766"
    monkeypatch.setenv("OPENAI_API_KEY", canary)
    tp, exporter = provider()
    store, _ = await run(
        OtelSink(tp, include_prompts=False), tmp_path, a=fixed("a", f"leaked {canary}")
    )
    spans = exporter.get_finished_spans()
    assert spans
    for span in spans:
        attrs = dict(span.attributes or {})
        assert "input.value" not in attrs
        assert not any(k.startswith("llm.input_messages") for k in attrs)
        assert canary not in json.dumps(attrs, default=str)
    assert by_name(spans)["proposer a"].attributes["output.value"] == "leaked ***"  # type: ignore[index]
    store.close()


def test_sink_from_env_needs_an_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", raising=False)
    assert otel_sink_from_env() is None
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")
    assert isinstance(otel_sink_from_env(), OtelSink)


def test_default_recorder_follows_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from moakit.trace.defaults import default_recorder
    from moakit.trace.store import TraceStore as Store

    monkeypatch.setenv("MOAKIT_TRACE_DB", str(tmp_path / "d.db"))
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", raising=False)
    monkeypatch.setenv("MOAKIT_TRACE", "off")
    assert default_recorder(source="cli") is None
    monkeypatch.delenv("MOAKIT_TRACE")
    monkeypatch.setenv("MOAKIT_TRACE_PROMPTS", "0")
    recorder = default_recorder(source="cli")
    assert recorder is not None and recorder.source == "cli"
    [store] = recorder.sinks
    assert isinstance(store, Store) and store.path == tmp_path / "d.db"
    assert store.store_prompts is False
    store.close()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")
    recorder = default_recorder(source="server")
    assert recorder is not None
    assert [type(s).__name__ for s in recorder.sinks] == ["TraceStore", "OtelSink"]
    recorder.sinks[0].close()  # type: ignore[attr-defined]
