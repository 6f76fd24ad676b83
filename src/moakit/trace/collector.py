"""Turns one run's events into ``QueryRecord``/``CallRecord``s and hands them to sinks.

Each call's record is built from its ``MemberStarted`` (the exact request, and the references
the call was shown after the stack's defenses) and its ``MemberFinished`` or
``AggregatorAttemptFailed`` (what came back); the query's from ``RunFinished``/``RunFailed``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from moakit.config import config_hash
from moakit.engine.run import FINAL_OVERRIDES
from moakit.events import (
    AggregatorAttemptFailed,
    MemberFinished,
    MemberStarted,
    RunFailed,
    RunFinished,
    RunStarted,
)
from moakit.messages import to_openai, tool_choice_to_openai
from moakit.references import Reference
from moakit.trace.records import (
    AttemptRecord,
    CallRecord,
    Level,
    QueryRecord,
    ReferenceShown,
    ToolCallRecord,
)

if TYPE_CHECKING:
    from moakit.config import StackConfig
    from moakit.result import MemberOutput, Result


class TraceSink(Protocol):
    """Where records go. Called on the event loop: implementations must not block."""

    def query_started(self, query: QueryRecord) -> None: ...

    def call_finished(self, call: CallRecord) -> None: ...

    def query_finished(self, query: QueryRecord, calls: Sequence[CallRecord]) -> None: ...


_CONFIGS: dict[int, tuple[StackConfig, str, dict[str, Any]]] = {}


def config_record(config: StackConfig) -> tuple[str, dict[str, Any]]:
    """``(hash, JSON dump)`` of a stack config, computed once per config object (a server runs
    the same few stacks for every query; dumping one per query is measurable)."""
    cached = _CONFIGS.get(id(config))
    if cached is None or cached[0] is not config:
        dump = config.model_dump(mode="json")
        cached = (config, config_hash(config), dump)
        if len(_CONFIGS) > 256:
            _CONFIGS.clear()
        _CONFIGS[id(config)] = cached
    return cached[1], cached[2]


# The request fields that steer the final aggregator: the engine's own list.
_PARAMETERS = FINAL_OVERRIDES


def request_parameters(source: Any) -> dict[str, Any]:
    """The sampling parameters of a ``ChatRequest`` or a ``MemberSpec`` that are set."""
    out: dict[str, Any] = {}
    for name in _PARAMETERS:
        value = _field(source, name)
        if value is None or value == ():
            continue
        if name == "stop":
            value = list(value)
        elif name == "tools":
            value = [tool.to_openai() for tool in value]
        elif name == "tool_choice":
            value = tool_choice_to_openai(value)
        out[name] = value
    return out


@dataclass
class _Start:
    """What is known about a call before it finishes (from its MemberStarted)."""

    input: list[dict[str, Any]] | None
    parameters: dict[str, Any]
    references: list[ReferenceShown]
    start_time: float


@dataclass
class RunCollector:
    """The state of one run's trace. Not thread-safe: one run's events arrive in order."""

    query: QueryRecord
    sinks: Sequence[TraceSink]
    _starts: dict[tuple[int, int], _Start] = field(default_factory=dict)
    _calls: dict[tuple[int, int], CallRecord] = field(default_factory=dict)
    finished: bool = False

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        for sink in self.sinks:
            sink.query_started(self.query)

    def handle(self, event: object) -> None:
        if self.finished:
            return
        if isinstance(event, MemberStarted):
            self._member_started(event)
        elif isinstance(event, MemberFinished):
            self._emit_call(event.output, aggregator=False)
        elif isinstance(event, AggregatorAttemptFailed):
            self._emit_call(event.failed, aggregator=True)
        elif isinstance(event, RunStarted):
            # Without the config itself the engine's hash still says which stack answered.
            if self.query.stack_config is None:
                self.query.config_hash = event.config_hash
        elif isinstance(event, RunFinished):
            self.finish(event.result, status="complete")
        elif isinstance(event, RunFailed):
            self.finish(event.result, status="failed", error=event.error)
        # AggregatorStarted, LayerStarted, deltas: nothing to record (MemberStarted follows each
        # call's start with its exact request).

    def finish(self, result: Result | None, *, status: str, error: str | None = None) -> None:
        if self.finished:
            return
        self.finished = True
        q = self.query
        now = time.time()
        if result is not None:
            for layer in result.layers:
                for out in layer.members:
                    if (out.layer, out.index) not in self._calls:
                        self._emit_call(out, aggregator=False)
            # The aggregator that answered is in the result (its failed attempts had events).
            for out in result.aggregators:
                self._emit_call(out, aggregator=True)
            usage = result.usage
            q.prompt_tokens, q.completion_tokens = usage.prompt_tokens, usage.completion_tokens
            q.cost_usd = result.cost_usd
            q.llm_calls, q.serial_rounds = result.llm_calls, result.serial_rounds
            q.output = result.final or None
            q.tool_calls = [ToolCallRecord.of(c) for c in result.tool_calls]
            q.advice, q.advice_from = result.advice, result.advice_from
            q.decisions = [
                d.model_dump(mode="json", exclude={"calls_saved"}) for d in result.decisions
            ]
            q.latency_s = result.latency_s
            error = error or result.error
        q.end_time = now
        if q.latency_s is None or not q.latency_s:
            q.latency_s = round(now - q.start_time, 6)
        q.status = status  # type: ignore[assignment]
        q.status_message = error
        calls = sorted(self._calls.values(), key=lambda c: (c.layer, c.index))
        for sink in self.sinks:
            sink.query_finished(q, calls)

    # -- calls -------------------------------------------------------------------------------

    def _member_started(self, event: MemberStarted) -> None:
        key = (event.layer, event.index)
        previous = self._starts.get(key)
        self._starts[key] = _Start(
            input=to_openai(event.request.messages),
            parameters=request_parameters(event.request),
            references=[_reference(r) for r in event.references],
            # Keep the first attempt's start: a retry's MemberStarted must not move it.
            start_time=previous.start_time if previous else event.ts,
        )

    def _emit_call(self, out: MemberOutput, *, aggregator: bool) -> None:
        q = self.query
        start = self._starts.get((out.layer, out.index))
        begin = q.start_time + out.started_s
        call = CallRecord(
            query_id=q.id,
            layer=out.layer,
            index=out.index,
            role="aggregator" if aggregator else "proposer",
            label=out.label,
            provider=out.provider,
            model_name=out.model,
            model_parameters=dict(start.parameters) if start else {},
            input=start.input if start else None,
            references=list(start.references) if start else [],
            output=out.output,
            tool_calls=[ToolCallRecord.of(c) for c in out.tool_calls],
            finish_reason=out.finish_reason,
            truncated=out.truncated,
            cancelled=out.cancelled,
            prompt_tokens=out.usage.prompt_tokens,
            completion_tokens=out.usage.completion_tokens,
            cost_usd=out.cost_usd,
            start_time=begin,
            end_time=begin + out.latency_s,
            latency_s=out.latency_s,
            ttft_s=out.ttft_s,
            attempts=[
                AttemptRecord(
                    number=a.number,
                    started_s=a.started_s,
                    latency_s=a.latency_s,
                    error=a.error,
                    ttft_s=a.ttft_s,
                )
                for a in out.attempts
            ],
            steps=[step.model_dump(mode="json") for step in out.steps],
            level=_level(out),
            status_message=out.error,
        )
        # Records handed to sinks are never mutated afterwards, so they are shared, not copied.
        # Hashes are left to the sinks, which compute them off the event loop.
        self._calls[(out.layer, out.index)] = call
        for sink in self.sinks:
            sink.call_finished(call)


def _field(obj: object, name: str) -> Any:
    """A field that a request or spec may lack, else None. Read from the instance dict
    (pydantic models and dataclasses keep fields there): getattr of a missing name on a
    pydantic model takes a slow exception path, on every call."""
    values = getattr(obj, "__dict__", None)
    if values is not None:
        return values.get(name)
    return getattr(obj, name, None)


def _level(out: MemberOutput) -> Level:
    if out.cancelled or out.truncated:
        return "WARNING"
    return "ERROR" if out.error is not None else "DEFAULT"


def _reference(ref: Reference) -> ReferenceShown:
    return ReferenceShown(
        layer=ref.layer,
        index=ref.index,
        label=ref.label,
        model=ref.model,
        text=ref.text,
        text_hash=None,
        truncated=ref.truncated,
    )
