"""Turns one run's events into ``QueryRecord``/``CallRecord``s and hands them to sinks.

Written against two generations of ``moakit.events`` at once, on purpose:

* today's events carry no ``run_id``/``ts`` and there is no ``MemberStarted``: the run id comes
  from the caller (``TraceRecorder.bind``), times from ``time.time()``, and a call's input is
  derived from the stack's specs and the previous layer's answers, exactly as today's engine
  builds it (``prompts.with_system_prompt`` + ``prompts.inject_references``);
* the engine contract's events (``RunStarted``, ``MemberStarted`` with its ``ChatRequest``,
  ``AggregatorAttemptFailed``, ``RunFailed``, ``run_id``/``ts`` on every event) are used when
  present and win over the derived values.

Events are therefore dispatched by class name and read with ``getattr`` and defaults, so this
module imports no event class that may not exist yet.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from moakit.engine.run import FINAL_OVERRIDES
from moakit.prompts import inject_references, with_system_prompt
from moakit.trace.records import (
    AttemptRecord,
    CallRecord,
    Level,
    QueryRecord,
    ReferenceShown,
    content_hash,
)

if TYPE_CHECKING:
    from moakit.config import MemberSpec, StackConfig
    from moakit.engine import Stack
    from moakit.result import MemberOutput, Result


class TraceSink(Protocol):
    """Where records go. Called on the event loop: implementations must not block."""

    def query_started(self, query: QueryRecord) -> None: ...

    def call_finished(self, call: CallRecord) -> None: ...

    def query_finished(self, query: QueryRecord, calls: Sequence[CallRecord]) -> None: ...


def config_hash(config: StackConfig) -> str:
    return content_hash(config.model_dump(mode="json"))


_CONFIGS: dict[int, tuple[StackConfig, str, dict[str, Any]]] = {}


def config_record(config: StackConfig) -> tuple[str, dict[str, Any]]:
    """``(hash, JSON dump)`` of a stack config, computed once per config object (a server runs
    the same few stacks for every query; dumping one per query is measurable)."""
    cached = _CONFIGS.get(id(config))
    if cached is None or cached[0] is not config:
        dump = config.model_dump(mode="json")
        cached = (config, content_hash(dump), dump)
        if len(_CONFIGS) > 256:
            _CONFIGS.clear()
        _CONFIGS[id(config)] = cached
    return cached[1], cached[2]


# The request fields that steer the final aggregator: the engine's own list.
_PARAMETERS = FINAL_OVERRIDES


# A stack's specs are resolved once and reused by every query: their parameters too.
_SPEC_PARAMETERS: dict[int, tuple[MemberSpec, dict[str, Any]]] = {}


def request_parameters(source: Any) -> dict[str, Any]:
    """The sampling parameters of a ``ChatRequest`` or a ``MemberSpec`` that are set."""
    out: dict[str, Any] = {}
    for name in _PARAMETERS:
        value = _field(source, name)
        if value is not None:
            out[name] = list(value) if name == "stop" else value
    return out


@dataclass
class _Start:
    """What is known about a call before it finishes."""

    input: list[dict[str, Any]] | None
    parameters: dict[str, Any]
    references: list[ReferenceShown]
    start_time: float
    exact: bool  # from MemberStarted (True) or derived from the specs (False)


@dataclass
class RunCollector:
    """The state of one run's trace. Not thread-safe: one run's events arrive in order."""

    query: QueryRecord
    sinks: Sequence[TraceSink]
    stack: Stack | None = None
    conversation: list[dict[str, Any]] = field(default_factory=list)
    request_overrides: dict[str, Any] = field(default_factory=dict)
    _starts: dict[tuple[int, int], _Start] = field(default_factory=dict)
    _calls: dict[tuple[int, int], CallRecord] = field(default_factory=dict)
    _references: list[ReferenceShown] = field(default_factory=list)
    _aggregators_started: int = 0
    _aggregator_index: int = 0
    _first_text_at: float | None = None
    finished: bool = False

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        for sink in self.sinks:
            sink.query_started(self.query)

    def handle(self, event: object) -> None:
        """Dispatch by class name (see the module docstring for why not isinstance)."""
        if self.finished:
            return
        handler = getattr(self, "_on_" + type(event).__name__, None)
        if handler is not None:
            handler(event)

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
            # The aggregator that answered has no event of its own today: it is in the result.
            for out in result.aggregators:
                self._emit_call(out, aggregator=True)
            usage = result.usage
            q.prompt_tokens, q.completion_tokens = usage.prompt_tokens, usage.completion_tokens
            q.cost_usd = result.cost_usd
            q.llm_calls, q.serial_rounds = result.llm_calls, result.serial_rounds
            q.output = result.final or None
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

    # -- events (today's names and the contract's) -------------------------------------------

    def _on_RunStarted(self, event: object) -> None:
        # Without the config itself (no stack given) the engine's hash still says which stack
        # answered; with it, start_run already used the stack's own hash.
        engine_hash = getattr(event, "config_hash", None)
        if engine_hash and self.query.stack_config is None:
            self.query.config_hash = engine_hash

    def _on_LayerStarted(self, event: object) -> None:
        layer: int = getattr(event, "layer", 0)
        if self.stack is None or not 1 <= layer <= len(self.stack.layer_specs):
            return
        specs = self.stack.layer_specs[layer - 1]
        now = _ts(event)
        for index, spec in enumerate(specs):
            self._starts.setdefault((layer, index), self._derived_start(spec, now, {}))

    def _on_MemberStarted(self, event: object) -> None:
        layer: int = getattr(event, "layer", 0)
        index: int = getattr(event, "index", 0)
        request = getattr(event, "request", None)
        shown = getattr(event, "references", None)  # a list of Reference records, if given
        references = [_reference(r) for r in shown] if shown is not None else list(self._references)
        previous = self._starts.get((layer, index))
        self._starts[(layer, index)] = _Start(
            input=_messages(getattr(request, "messages", None)),
            parameters=request_parameters(request),
            references=references,
            # Keep the first attempt's start: a retry's MemberStarted must not move it.
            start_time=previous.start_time if previous and previous.exact else _ts(event),
            exact=True,
        )

    def _on_MemberFinished(self, event: object) -> None:
        self._emit_call(getattr(event, "output"), aggregator=False)  # noqa: B009

    def _on_LayerFinished(self, event: object) -> None:
        layer = getattr(event, "layer")  # noqa: B009 - dispatched by name
        # Today's engine shows the next layer (or the aggregator) the successful answers of this
        # one, in index order.
        self._references = [
            _reference_from_output(m) for m in layer.members if m.ok and m.output is not None
        ]

    def _on_AggregatorStarted(self, event: object) -> None:
        index: int = getattr(event, "index", self._aggregators_started)
        self._aggregators_started += 1
        self._aggregator_index = index
        self._first_text_at = None
        if self.stack is not None and index < len(self.stack.aggregator_specs):
            layer = len(self.stack.layer_specs) + 1
            spec = self.stack.aggregator_specs[index]
            start = self._derived_start(spec, _ts(event), self.request_overrides)
            self._starts.setdefault((layer, index), start)

    def _on_TextDelta(self, event: object) -> None:
        if self._first_text_at is None:
            self._first_text_at = _ts(event)

    def _on_AggregatorFailed(self, event: object) -> None:
        self._emit_call(getattr(event, "failed"), aggregator=True)  # noqa: B009
        self._first_text_at = None  # a retry measures its own time to first token

    _on_AggregatorAttemptFailed = _on_AggregatorFailed

    def _on_RunFinished(self, event: object) -> None:
        self.finish(getattr(event, "result", None), status="complete")

    def _on_RunFailed(self, event: object) -> None:
        error = getattr(event, "error", None)
        self.finish(getattr(event, "result", None), status="failed", error=error)

    # -- building call records -----------------------------------------------------------------

    def _derived_start(self, spec: MemberSpec, now: float, overrides: dict[str, Any]) -> _Start:
        assert self.stack is not None
        texts = [r.text or "" for r in self._references]
        messages = with_system_prompt(self.conversation, spec.system)
        messages = inject_references(messages, texts, self.stack.config.aggregate_prompt)
        params = _SPEC_PARAMETERS.get(id(spec))
        if params is None or params[0] is not spec:
            params = (spec, request_parameters(spec))
            if len(_SPEC_PARAMETERS) > 4096:
                _SPEC_PARAMETERS.clear()
            _SPEC_PARAMETERS[id(spec)] = params
        return _Start(
            input=messages,
            parameters={**params[1], **overrides},
            references=list(self._references),
            start_time=now,
            exact=False,
        )

    def _emit_call(self, out: MemberOutput, *, aggregator: bool) -> None:
        q = self.query
        start = self._starts.get((out.layer, out.index))
        begin = q.start_time + out.started_s
        ttft: float | None = _field(out, "ttft_s")
        if (
            ttft is None
            and aggregator
            and out.ok
            and out.index == self._aggregator_index
            and self._first_text_at is not None
        ):
            # Today's outputs carry no ttft: measure the answering attempt's from TextDelta.
            attempt_start = q.start_time + (out.attempts[-1].started_s if out.attempts else 0.0)
            ttft = round(max(0.0, self._first_text_at - attempt_start), 6)
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
            finish_reason=out.finish_reason,
            truncated=out.truncated,
            cancelled=out.cancelled,
            prompt_tokens=out.usage.prompt_tokens,
            completion_tokens=out.usage.completion_tokens,
            cost_usd=out.cost_usd,
            start_time=begin,
            end_time=begin + out.latency_s,
            latency_s=out.latency_s,
            ttft_s=ttft,
            attempts=[
                AttemptRecord(
                    number=a.number,
                    started_s=a.started_s,
                    latency_s=a.latency_s,
                    error=a.error,
                    ttft_s=_field(a, "ttft_s"),
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
    """A field that only some versions of a record have (``ttft_s``, ``top_p``), else None.
    Read from the instance dict (pydantic models and dataclasses keep fields there): getattr
    of a missing name on a pydantic model takes a slow exception path, on every call."""
    values = getattr(obj, "__dict__", None)
    if values is not None:
        return values.get(name)
    return getattr(obj, name, None)


def _ts(event: object) -> float:
    ts = getattr(event, "ts", None)
    return float(ts) if isinstance(ts, int | float) else time.time()


def _level(out: MemberOutput) -> Level:
    if out.cancelled or out.truncated:
        return "WARNING"
    return "ERROR" if out.error is not None else "DEFAULT"


def _messages(messages: Any) -> list[dict[str, Any]] | None:
    if messages is None:
        return None
    return [dict(m) for m in messages]


def _reference_from_output(m: MemberOutput) -> ReferenceShown:
    text = m.output or ""
    return ReferenceShown(
        layer=m.layer,
        index=m.index,
        label=m.label,
        model=m.model,
        text=text,
        text_hash=None,
        truncated=m.truncated,
    )


def _reference(ref: Any) -> ReferenceShown:
    """A contract ``moakit.references.Reference`` (text, label, model, layer, index, truncated)."""
    text = str(getattr(ref, "text", ""))
    return ReferenceShown(
        layer=int(getattr(ref, "layer", 0)),
        index=int(getattr(ref, "index", 0)),
        label=str(getattr(ref, "label", "")),
        model=str(getattr(ref, "model", "")),
        text=text,
        text_hash=None,
        truncated=bool(getattr(ref, "truncated", False)),
    )
