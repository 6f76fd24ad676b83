"""What a run produced: who said what, when, at what cost. JSON-serializable (pydantic)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, computed_field

from moakit.messages import ToolCall, Usage


class Attempt(BaseModel):
    """One HTTP/inference call of a member. Retries add attempts; only the last may succeed.
    A call cut by the straggler policy, the deadline or the caller is an attempt too (its error
    says ``cancelled: ...``): the request was sent and may have cost tokens."""

    number: int  # 1-based
    started_s: float  # when this attempt started, seconds from the start of the query
    latency_s: float
    ttft_s: float | None = None  # time to the first text chunk, from this attempt's start
    error: str | None = None
    # What this attempt consumed, where the backend reported it (failed ones included).
    usage: Usage = Field(default_factory=Usage)


class ToolExchange(BaseModel):
    """One use of a built-in tool inside a member's answer (``engine.member_tools``): the
    call the member made, what the tool returned, and whether it ran cleanly."""

    call: ToolCall
    result: str
    ok: bool
    round: int  # 1-based: the model call that made it (parallel calls share a round)


class StairStep(BaseModel):
    """One step of a staircase writer (an aggregator, or a member above layer 1): the
    reference text it had seen, in characters per reference label, and how many characters of
    its own answer it had written by the end of the step (cumulative)."""

    refs_chars_seen: dict[str, int]
    text_chars: int
    final: bool = False  # the step that saw every reference complete
    defenses: list[str] = Field(default_factory=list)  # the defenses that acted on its references


class MemberOutput(BaseModel):
    layer: int  # 1-based; the aggregator's layer is ``len(layers) + 1``
    index: int  # position in the layer (0-based), the order references are injected in
    label: str
    provider: str
    model: str
    output: str | None = None
    # The tool calls of the answer (a final aggregator offered the caller's tools), checked
    # against the tools' schemas; ``output`` is then the text beside them, often empty.
    tool_calls: list[ToolCall] = Field(default_factory=list)
    error: str | None = None
    finish_reason: str | None = None
    truncated: bool = False  # finish_reason "length": kept, but never passed off as complete
    cancelled: bool = False  # cut by the straggler policy, the deadline, or the caller
    # started_s: when the call's first attempt started (seconds from the start of the query);
    # latency_s: from then until the call ended, retries and backoff included.
    latency_s: float = 0.0
    started_s: float = 0.0
    ttft_s: float | None = None  # time to first token of the successful attempt
    # Every attempt's usage, failed and cancelled ones included: what the member cost.
    usage: Usage = Field(default_factory=Usage)
    cost_usd: float | None = None
    attempts: list[Attempt] = Field(default_factory=list)
    # Staircase strategy only: the writer's steps in order (empty for the layered strategy).
    steps: list[StairStep] = Field(default_factory=list)
    # A tool-using member: each built-in tool it used, in order; every exchange cost one more
    # model call (counted in ``Result.llm_calls``).
    tool_exchanges: list[ToolExchange] = Field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.output is not None and self.error is None


class LayerResult(BaseModel):
    layer: int  # 1-based, like ``MemberOutput.layer``
    members: list[MemberOutput]
    latency_s: float
    min_successful: int

    @computed_field  # type: ignore[prop-decorator]
    @property
    def answered(self) -> int:
        return sum(1 for m in self.members if m.ok)


class DefenseAction(BaseModel):
    """A defense that acted on a run (``moakit.defenses``): which one, on the references going
    into which layer (the aggregator's is ``len(layers) + 1``), and what it did."""

    defense: str  # "fence", "cluster", "trust", "vote"
    layer: int
    detail: str
    dropped: list[str] = Field(default_factory=list)  # labels of references removed
    labelled: list[str] = Field(default_factory=list)  # labels of references marked untrusted
    extra_calls: int = 0  # calls the defense added beyond the plain stack's
    # Staircase strategy: the writer's step (1-based) whose references it acted on; each step
    # sees more of the references, so the same defense may act at every step.
    step: int | None = None


class Decision(BaseModel):
    """What the engine chose to spend or not (``engine.adaptive``), and why: an early exit on
    agreement, a cascade's escalation. ``skipped``: the calls not made (member labels, and
    ``aggregator``); ``calls_saved`` counts them."""

    kind: Literal["early_exit", "escalate", "budget", "route"]
    layer: int  # the layer whose answers were judged
    detail: str
    skipped: list[str] = Field(default_factory=list)
    answer_from: str | None = None  # early exit: the member whose answer is the answer

    @computed_field  # type: ignore[prop-decorator]
    @property
    def calls_saved(self) -> int:
        return len(self.skipped)


class Result(BaseModel):
    stack: str
    run_id: str = ""
    final: str = ""
    # The final answer's tool calls, for the caller to run (empty: ``final`` is the answer).
    tool_calls: list[ToolCall] = Field(default_factory=list)
    # With tools: whether the proposers' advice was written for this request ("fresh") or
    # reused from earlier in the same user turn ("reused"); ``None`` when no tools were
    # involved (see ``engine.advice``).
    advice: Literal["fresh", "reused"] | None = None
    advice_from: str | None = None  # reused: the run whose proposers wrote the advice
    layers: list[LayerResult] = Field(default_factory=list)
    # The aggregator that produced ``final`` is the last entry; earlier ones failed and a
    # fallback took over.
    aggregators: list[MemberOutput] = Field(default_factory=list)
    latency_s: float = 0.0
    error: str | None = None
    # Every time a defense acted (filtered, labelled, fenced, voted); empty without defenses.
    defenses: list[DefenseAction] = Field(default_factory=list)
    # Adaptive compute: each early exit or escalation, in order (empty when not adaptive).
    decisions: list[Decision] = Field(default_factory=list)

    @property
    def aggregator(self) -> MemberOutput | None:
        return self.aggregators[-1] if self.aggregators else None

    def calls(self) -> list[MemberOutput]:
        return [m for layer in self.layers for m in layer.members] + self.aggregators

    @computed_field  # type: ignore[prop-decorator]
    @property
    def usage(self) -> Usage:
        total = Usage()
        for m in self.calls():
            total = total + m.usage
        return total

    @computed_field  # type: ignore[prop-decorator]
    @property
    def total_tokens(self) -> int:
        return self.usage.total_tokens

    @computed_field  # type: ignore[prop-decorator]
    @property
    def llm_calls(self) -> int:
        """Every request sent: retries, cut stragglers and tool rounds included."""
        return sum(len(m.attempts) + _tool_rounds(m) for m in self.calls())

    @computed_field  # type: ignore[prop-decorator]
    @property
    def serial_rounds(self) -> int:
        """Rounds of calls that had to happen one after another: layers plus aggregator tries."""
        return len(self.layers) + len(self.aggregators)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def cost_usd(self) -> float | None:
        costs = [m.cost_usd for m in self.calls() if m.usage.total_tokens]
        if not costs or any(c is None for c in costs):
            return None
        return round(sum(c for c in costs if c is not None), 8)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def failures(self) -> list[str]:
        """``label (layer N): reason`` for every member that did not answer."""
        return [
            f"{m.label} (layer {m.layer}): {m.error}" for m in self.calls() if m.error is not None
        ]

    @property
    def truncated(self) -> bool:
        agg = self.aggregator
        return bool(agg and agg.truncated)


def _tool_rounds(member: MemberOutput) -> int:
    """Model calls a tool-using member made beyond one per attempt: one per round of calls."""
    return len({e.round for e in member.tool_exchanges})
