"""Progress events a run emits, in order. The CLI draws them; the server turns them into SSE."""

from __future__ import annotations

from dataclasses import dataclass

from moakit.result import LayerResult, MemberOutput, Result


@dataclass(frozen=True)
class LayerStarted:
    layer: int  # 1-based
    members: list[str]


@dataclass(frozen=True)
class MemberFinished:
    """A member answered, failed, or was cut. Emitted as each one completes."""

    output: MemberOutput


@dataclass(frozen=True)
class LayerFinished:
    layer: LayerResult


@dataclass(frozen=True)
class AggregatorStarted:
    label: str
    model: str
    references: int


@dataclass(frozen=True)
class AggregatorFailed:
    """An aggregator attempt failed and another (a retry or a fallback) takes over.
    ``discard_text``: it had streamed text, which the consumer must treat as void."""

    failed: MemberOutput
    discard_text: bool


@dataclass(frozen=True)
class TextDelta:
    text: str


@dataclass(frozen=True)
class RunFinished:
    result: Result


Event = (
    LayerStarted
    | MemberFinished
    | LayerFinished
    | AggregatorStarted
    | AggregatorFailed
    | TextDelta
    | RunFinished
)
