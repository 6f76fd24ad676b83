"""OpenTelemetry export: one span per query, a child per layer, a grandchild per call.

Attributes follow OpenInference (what Phoenix and Langfuse read: ``openinference.span.kind``,
``llm.model_name``, ``llm.token_count.*``, ``input.value``/``output.value``,
``llm.input_messages.N.message.*``) and the OpenTelemetry GenAI conventions (``gen_ai.*``, what
Jaeger users and newer backends read), so any of them shows a moakit trace without custom code.

Needs the ``otel`` extra (``pip install 'moakit[otel]'``). Spans are built when a query finishes,
from the same records the store keeps, with the calls' real start and end times.

    from moakit.trace.otel import OtelSink, otlp_tracer_provider
    sink = OtelSink(otlp_tracer_provider())          # OTEL_EXPORTER_OTLP_ENDPOINT etc.
    recorder = TraceRecorder(store, sink)
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from moakit.trace.records import CallRecord, QueryRecord, call_input_hash
from moakit.trace.redact import Redactor

INSTRUMENTATION = "moakit"


def _ns(seconds: float) -> int:
    return int(seconds * 1e9)


def otlp_tracer_provider(service_name: str = "moakit") -> TracerProvider:
    """A provider exporting over OTLP/HTTP. The exporter reads the standard variables:
    ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or ``..._TRACES_ENDPOINT``), ``OTEL_EXPORTER_OTLP_HEADERS``
    (e.g. Langfuse's ``Authorization=Basic ...``); ``OTEL_SERVICE_NAME`` overrides the name."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    name = os.environ.get("OTEL_SERVICE_NAME", service_name)
    provider = TracerProvider(resource=Resource.create({"service.name": name}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    return provider


def otel_sink_from_env() -> OtelSink | None:
    """An ``OtelSink`` when an OTLP endpoint is configured in the environment, else None."""
    if not (
        os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    ):
        return None
    return OtelSink(otlp_tracer_provider())


class OtelSink:
    """A trace sink that emits each finished query as spans. ``include_prompts=False`` leaves
    the messages out (their hashes stay), like ``TraceStore(store_prompts=False)``."""

    def __init__(
        self,
        tracer_provider: trace.TracerProvider | None = None,
        *,
        include_prompts: bool = True,
        redactor: Redactor | None = None,
    ) -> None:
        provider = tracer_provider or trace.get_tracer_provider()
        self._tracer = provider.get_tracer(INSTRUMENTATION)
        self.include_prompts = include_prompts
        self._redactor = redactor

    def query_started(self, query: QueryRecord) -> None:
        """Nothing yet: spans are emitted whole when the query finishes."""

    def call_finished(self, call: CallRecord) -> None:
        """Nothing yet: the query's calls come again with ``query_finished``."""

    def query_finished(self, query: QueryRecord, calls: Sequence[CallRecord]) -> None:
        r = self._redactor or Redactor.from_environment()
        end = query.end_time or query.start_time
        root = self._tracer.start_span(
            f"moa {query.stack_name}",
            kind=SpanKind.INTERNAL,
            start_time=_ns(query.start_time),
            attributes=self._query_attributes(query, r),
        )
        if query.status != "complete":
            root.set_status(Status(StatusCode.ERROR, r.text(query.status_message) or query.status))
        ctx = trace.set_span_in_context(root)
        by_layer: dict[int, list[CallRecord]] = {}
        for call in calls:
            by_layer.setdefault(call.layer, []).append(call)
        for layer, members in sorted(by_layer.items()):
            aggregator = all(c.role == "aggregator" for c in members)
            span = self._tracer.start_span(
                "aggregator" if aggregator else f"layer {layer}",
                context=ctx,
                start_time=_ns(min(c.start_time for c in members)),
                attributes={
                    "openinference.span.kind": "CHAIN",
                    "moakit.layer": layer,
                    "moakit.members": len(members),
                    "moakit.answered": sum(1 for c in members if c.ok),
                },
            )
            layer_ctx = trace.set_span_in_context(span)
            for call in sorted(members, key=lambda c: c.index):
                self._call_span(call, layer_ctx, r, query.start_time)
            span.end(end_time=_ns(max(c.end_time for c in members)))
        root.end(end_time=_ns(end))

    # -- attributes -------------------------------------------------------------------------

    def _query_attributes(self, q: QueryRecord, r: Redactor) -> dict[str, Any]:
        attrs: dict[str, Any] = {
            "openinference.span.kind": "CHAIN",
            "moakit.run_id": q.id,
            "moakit.stack": q.stack_name,
            "moakit.status": q.status,
            "moakit.source": q.source,
            "moakit.llm_calls": q.llm_calls,
            "moakit.serial_rounds": q.serial_rounds,
            "llm.token_count.prompt": q.prompt_tokens,
            "llm.token_count.completion": q.completion_tokens,
            "llm.token_count.total": q.total_tokens,
            "gen_ai.usage.input_tokens": q.prompt_tokens,
            "gen_ai.usage.output_tokens": q.completion_tokens,
        }
        if q.config_hash:
            attrs["moakit.config_hash"] = q.config_hash
        if q.cost_usd is not None:
            attrs["moakit.cost_usd"] = q.cost_usd
        if q.input_hash:
            attrs["moakit.input_hash"] = q.input_hash
        if self.include_prompts and q.input is not None:
            attrs["input.value"] = json.dumps(r.value(q.input), ensure_ascii=False)
            attrs["input.mime_type"] = "application/json"
        if q.output is not None:
            attrs["output.value"] = r.text(q.output)
            attrs["output.mime_type"] = "text/plain"
        if q.tool_calls:
            attrs["moakit.tool_calls"] = [r.text(c.name) or "" for c in q.tool_calls]
        if q.advice is not None:
            attrs["moakit.advice"] = q.advice
        if q.advice_from is not None:
            attrs["moakit.advice_from"] = q.advice_from
        if q.decisions:
            attrs["moakit.decisions"] = json.dumps(q.decisions, ensure_ascii=False)
        return attrs

    def _call_span(self, call: CallRecord, ctx: Any, r: Redactor, query_start: float) -> Span:
        params = call.model_parameters
        attrs: dict[str, Any] = {
            "openinference.span.kind": "LLM",
            "llm.model_name": call.model_name,
            "llm.provider": call.provider,
            "llm.invocation_parameters": json.dumps(r.value(params), ensure_ascii=False),
            "llm.token_count.prompt": call.prompt_tokens,
            "llm.token_count.completion": call.completion_tokens,
            "llm.token_count.total": call.prompt_tokens + call.completion_tokens,
            "gen_ai.operation.name": "chat",
            "gen_ai.system": call.provider,
            "gen_ai.request.model": call.model_name,
            "gen_ai.response.model": call.model_name,
            "gen_ai.usage.input_tokens": call.prompt_tokens,
            "gen_ai.usage.output_tokens": call.completion_tokens,
            "moakit.run_id": call.query_id,
            "moakit.layer": call.layer,
            "moakit.index": call.index,
            "moakit.role": call.role,
            "moakit.label": r.text(call.label) or "",
            "moakit.attempts": len(call.attempts),
            "moakit.cancelled": call.cancelled,
            "moakit.truncated": call.truncated,
            "moakit.references": len(call.references),
        }
        for name in ("temperature", "max_tokens", "top_p", "seed"):
            if isinstance(params.get(name), int | float):
                attrs[f"gen_ai.request.{name}"] = params[name]
        if call.finish_reason:
            attrs["gen_ai.response.finish_reasons"] = [call.finish_reason]
        if call.ttft_s is not None:
            attrs["moakit.ttft_s"] = call.ttft_s
        if call.cost_usd is not None:
            attrs["moakit.cost_usd"] = call.cost_usd
        input_hash = call_input_hash(call)
        if input_hash:
            attrs["moakit.input_hash"] = input_hash
        if self.include_prompts and call.input is not None:
            messages = r.value(call.input)
            attrs["input.value"] = json.dumps(messages, ensure_ascii=False)
            attrs["input.mime_type"] = "application/json"
            for i, m in enumerate(messages):
                attrs.update(_input_message(f"llm.input_messages.{i}.message", m))
        for i, tool in enumerate(params.get("tools") or ()):
            attrs[f"llm.tools.{i}.tool.json_schema"] = json.dumps(r.value(tool), ensure_ascii=False)
            function = tool.get("function") if isinstance(tool, dict) else None
            if isinstance(function, dict) and isinstance(function.get("name"), str):
                attrs[f"llm.tools.{i}.tool.name"] = r.text(function["name"])
        if call.output is not None or call.tool_calls:
            attrs["llm.output_messages.0.message.role"] = "assistant"
        if call.output is not None:
            attrs["output.value"] = r.text(call.output)
            attrs["output.mime_type"] = "text/plain"
            attrs["llm.output_messages.0.message.content"] = r.text(call.output)
        for j, tool_call in enumerate(call.tool_calls):
            # The arguments are user data, left out with the prompts (names and ids stay).
            prefix = f"llm.output_messages.0.message.tool_calls.{j}.tool_call"
            attrs[f"{prefix}.id"] = r.text(tool_call.id) or ""
            attrs[f"{prefix}.function.name"] = r.text(tool_call.name) or ""
            if self.include_prompts and tool_call.arguments is not None:
                attrs[f"{prefix}.function.arguments"] = r.text(tool_call.arguments) or ""
        span = self._tracer.start_span(
            f"{call.role} {call.label}",
            context=ctx,
            kind=SpanKind.CLIENT,
            start_time=_ns(call.start_time),
            attributes=attrs,
        )
        for attempt in call.attempts:
            if attempt.error:
                span.add_event(
                    "attempt failed",
                    attributes={
                        "moakit.attempt": attempt.number,
                        "error": r.text(attempt.error) or "",
                    },
                    timestamp=_ns(query_start + attempt.started_s + attempt.latency_s),
                )
        if call.status_message is not None:
            span.set_status(Status(StatusCode.ERROR, r.text(call.status_message)))
        span.end(end_time=_ns(call.end_time))
        return span


def _input_message(prefix: str, message: dict[str, Any]) -> dict[str, Any]:
    """One input message (OpenAI's dict shape, already scrubbed) as OpenInference attributes:
    its role, its text, the tool calls an assistant made and the call a tool result answers."""
    attrs: dict[str, Any] = {f"{prefix}.role": str(message.get("role", ""))}
    content = message.get("content")
    if isinstance(content, str):
        attrs[f"{prefix}.content"] = content
    elif content is not None:
        attrs[f"{prefix}.content"] = json.dumps(content, ensure_ascii=False)
    if isinstance(message.get("tool_call_id"), str):
        attrs[f"{prefix}.tool_call_id"] = message["tool_call_id"]
    for j, raw in enumerate(message.get("tool_calls") or ()):
        function = raw.get("function") if isinstance(raw, dict) else None
        if not isinstance(function, dict):
            continue
        call = f"{prefix}.tool_calls.{j}.tool_call"
        attrs[f"{call}.id"] = str(raw.get("id", ""))
        attrs[f"{call}.function.name"] = str(function.get("name", ""))
        arguments = function.get("arguments")
        if isinstance(arguments, str):
            attrs[f"{call}.function.arguments"] = arguments
    return attrs
