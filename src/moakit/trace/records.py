"""What a trace holds: one ``QueryRecord`` per run and one ``CallRecord`` per model call.

Plain dataclasses, shared by every sink (the SQLite store, the OpenTelemetry export, the JSON
export), so each of them maps the same facts. Field names follow the trace tools people already
run: Langfuse observations (``input``/``output``, ``start_time``/``end_time``, ``level``,
``status_message``, ``model_parameters``) and OpenInference LLM spans (``model_name``,
``prompt_tokens``/``completion_tokens``).

Times are epoch seconds (``time.time()``); latencies are seconds.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from moakit.hashing import canonical_json, content_hash
from moakit.messages import ToolCall

__all__ = [
    "AttemptRecord",
    "CallRecord",
    "QueryRecord",
    "ReferenceShown",
    "ToolCallRecord",
    "TraceRecord",
    "call_input_hash",
    "canonical_json",
    "content_hash",
    "reference_hash",
    "tool_call_hash",
]

QueryStatus = Literal["incomplete", "complete", "failed", "cancelled"]
# "incomplete": started, never finished: still running, or the process died mid-query.
QUERY_STATUSES: tuple[str, ...] = ("incomplete", "complete", "failed", "cancelled")

# Langfuse's observation levels; ERROR for a failed call, WARNING for a cut or truncated one.
Level = Literal["DEFAULT", "WARNING", "ERROR"]


@dataclass
class ReferenceShown:
    """One reference a call was shown (a previous layer's answer, as injected into its prompt).
    ``text`` is None when prompts are not stored; ``text_hash`` is always set once stored (a
    sink computes it, off the event loop, with ``reference_hash``)."""

    layer: int
    index: int
    label: str
    model: str
    text_hash: str | None
    text: str | None = None
    truncated: bool = False


@dataclass
class ToolCallRecord:
    """A tool call a model answered with (checked against its tool's schema by the engine).
    The arguments are user data, like prompts: ``arguments`` is None when prompts are not
    stored, and ``arguments_hash`` is then set (a sink computes it, see ``tool_call_hash``)."""

    id: str
    name: str
    arguments: str | None
    arguments_hash: str | None = None

    @classmethod
    def of(cls, call: ToolCall) -> ToolCallRecord:
        return cls(id=call.id, name=call.name, arguments=call.arguments)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ToolCallRecord:
        return cls(
            id=str(data.get("id", "")),
            name=str(data.get("name", "")),
            arguments=data.get("arguments"),
            arguments_hash=data.get("arguments_hash"),
        )


@dataclass
class AttemptRecord:
    number: int
    started_s: float  # offset from the query's start
    latency_s: float
    error: str | None = None
    ttft_s: float | None = None


@dataclass
class CallRecord:
    """One member's call (its retries are ``attempts``). ``layer`` is 1-based; the aggregator's
    layer is ``len(layers) + 1`` and its fallbacks take indexes 1, 2, ..."""

    query_id: str
    layer: int
    index: int
    role: Literal["proposer", "aggregator"]
    label: str
    provider: str
    model_name: str
    model_parameters: dict[str, Any] = field(default_factory=dict)
    input: list[dict[str, Any]] | None = None  # the messages sent; None when not stored/known
    input_hash: str | None = None  # set by sinks when None (see ``call_input_hash``)
    references: list[ReferenceShown] = field(default_factory=list)
    output: str | None = None
    # The answer's tool calls (a final aggregator offered tools); ``output`` is the text
    # beside them, often empty.
    tool_calls: list[ToolCallRecord] = field(default_factory=list)
    finish_reason: str | None = None
    truncated: bool = False
    cancelled: bool = False
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float | None = None
    start_time: float = 0.0
    end_time: float = 0.0
    latency_s: float = 0.0
    ttft_s: float | None = None
    attempts: list[AttemptRecord] = field(default_factory=list)
    # Staircase steps: [{"refs_chars_seen": {label: chars}, "text_chars": n, "final": bool}].
    steps: list[dict[str, Any]] = field(default_factory=list)
    level: Level = "DEFAULT"
    status_message: str | None = None  # the error, when the call failed or was cut

    @property
    def ok(self) -> bool:
        return self.output is not None and self.status_message is None


@dataclass
class QueryRecord:
    id: str  # the run id
    stack_name: str
    config_hash: str | None
    stack_config: dict[str, Any] | None = None
    source: str = "library"  # which surface ran it: cli, server, ui, library
    start_time: float = 0.0
    end_time: float | None = None
    input: list[dict[str, Any]] | None = None  # the request's messages; None when not stored
    input_hash: str | None = None
    status: QueryStatus = "incomplete"
    output: str | None = None  # the final answer
    # The final answer's tool calls, for the caller to run (empty: ``output`` is the answer).
    tool_calls: list[ToolCallRecord] = field(default_factory=list)
    # With tools in play: whether the proposers' advice was written for this query ("fresh")
    # or reused from earlier in the same user turn ("reused", written by ``advice_from``);
    # None when no tools were involved.
    advice: str | None = None
    advice_from: str | None = None
    # Adaptive compute: each decision (``Result.decisions``) as JSON: kind, layer, detail,
    # skipped, answer_from.
    decisions: list[dict[str, Any]] = field(default_factory=list)
    latency_s: float | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float | None = None
    llm_calls: int = 0
    serial_rounds: int = 0
    status_message: str | None = None  # the error of a failed query

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass
class TraceRecord:
    """A query with its calls, as read back from a store (or assembled for export)."""

    query: QueryRecord
    calls: list[CallRecord] = field(default_factory=list)

    def layers(self) -> dict[int, list[CallRecord]]:
        out: dict[int, list[CallRecord]] = {}
        for call in sorted(self.calls, key=lambda c: (c.layer, c.index)):
            out.setdefault(call.layer, []).append(call)
        return out

    def to_json(self) -> dict[str, Any]:
        query = asdict(self.query)
        query["total_tokens"] = self.query.total_tokens
        return {"query": query, "calls": [asdict(c) for c in self.calls]}


def call_input_hash(call: CallRecord) -> str | None:
    """The call's input hash: the recorded one, else computed from its input."""
    if call.input_hash is not None or call.input is None:
        return call.input_hash
    return content_hash(call.input)


def tool_call_hash(call: ToolCallRecord) -> str | None:
    """The hash of a call's arguments: the recorded one, else computed from them."""
    if call.arguments_hash is not None or call.arguments is None:
        return call.arguments_hash
    return content_hash(call.arguments)


def reference_hash(ref: ReferenceShown) -> str:
    return ref.text_hash or content_hash(ref.text or "")
