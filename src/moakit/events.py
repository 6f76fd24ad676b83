"""What a run emits, in order. Observers (the CLI, the server, a trace recorder, a live UI) see
every event; ``Stack.events()`` yields the same sequence.

Every event carries the run's id and ``ts`` (``time.time()`` epoch seconds) after its payload.
Layers are numbered from 1 (the final aggregator's layer is ``len(layers) + 1``); members and
aggregators are indexed from 0 (the aggregator is 0, its fallbacks 1, 2, ...).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypedDict

from moakit.messages import ChatRequest, ToolCall
from moakit.references import Reference
from moakit.result import Decision, LayerResult, MemberOutput, Result


class Stamp(TypedDict):
    run_id: str
    ts: float


@dataclass(frozen=True, kw_only=True)
class BaseEvent:
    run_id: str
    ts: float


@dataclass(frozen=True)
class RunStarted(BaseEvent):
    stack: str
    config_hash: str  # sha256 of the stack config's canonical JSON: which stack answered


@dataclass(frozen=True)
class LayerStarted(BaseEvent):
    layer: int
    members: list[str]


@dataclass(frozen=True)
class MemberStarted(BaseEvent):
    """One attempt of one call is sent (proposers and aggregators alike); ``request`` is exactly
    what the model receives, and ``references`` the answers it was shown in it (after the
    stack's reference transforms and defenses: a reference a defense dropped is not there)."""

    layer: int
    index: int
    label: str
    provider: str
    model: str
    attempt: int  # 1-based
    request: ChatRequest
    references: tuple[Reference, ...] = ()


@dataclass(frozen=True)
class MemberDelta(BaseEvent):
    """Proposer text as it streams. A failed attempt's deltas are void (its MemberFinished or
    the next MemberStarted of the same member says so)."""

    layer: int
    index: int
    text: str


@dataclass(frozen=True)
class MemberFinished(BaseEvent):
    """A member answered, failed, or was cut. Emitted as each one completes."""

    output: MemberOutput


@dataclass(frozen=True)
class LayerFinished(BaseEvent):
    layer: int  # as in LayerStarted
    result: LayerResult


@dataclass(frozen=True)
class AggregatorStarted(BaseEvent):
    """An aggregator call starts: ``index`` counts the run's aggregator calls (0, then each
    fallback or vote sample); ``references``: how many it is shown."""

    index: int
    label: str
    model: str
    references: int


@dataclass(frozen=True)
class AggregatorAttemptFailed(BaseEvent):
    """An aggregator attempt failed. ``will_retry``: another attempt (a retry or a fallback)
    follows. ``had_text``: it had produced text (with ``streaming=True`` that text was sent
    as TextDelta, and the failure is then final)."""

    failed: MemberOutput
    will_retry: bool
    had_text: bool


@dataclass(frozen=True)
class TextDelta(BaseEvent):
    """Final answer text. Never text that is not the answer: with ``streaming=False`` it comes
    once, when the aggregator attempt completed."""

    text: str


@dataclass(frozen=True)
class Decided(BaseEvent):
    """An adaptive decision (``engine.adaptive``): an early exit or an escalation."""

    decision: Decision


@dataclass(frozen=True)
class ToolCalls(BaseEvent):
    """The final answer's tool calls, once the attempt that made them completed and they were
    checked against the tools' schemas (after any ``TextDelta`` of that answer). Never a call
    of an attempt that was discarded."""

    calls: tuple[ToolCall, ...]


@dataclass(frozen=True)
class RunFinished(BaseEvent):
    result: Result


@dataclass(frozen=True)
class RunFailed(BaseEvent):
    """The last event of a failed run, right before its ``QueryFailed`` is raised."""

    error: str
    result: Result


Event = (
    RunStarted
    | LayerStarted
    | MemberStarted
    | MemberDelta
    | MemberFinished
    | LayerFinished
    | AggregatorStarted
    | AggregatorAttemptFailed
    | TextDelta
    | Decided
    | ToolCalls
    | RunFinished
    | RunFailed
)
