"""The one aggregator chain, shared by every strategy: the final aggregator, then its fallbacks
in order, under the stream rule.

Stream rule: once an aggregator attempt's text has gone out (``TextDelta``), a failure is final
(no retry, no fallback): ``AggregatorFailed`` carries the text already sent as
``result.final``. Before that, retries and fallbacks are free. Without streaming, text is
committed only when an attempt (or a staircase step) completes, so a failed attempt's text
never reaches ``result.final``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from moakit.config import ResolvedMember
from moakit.engine.calls import Call, OnFailure, call_with_retries
from moakit.engine.run import Run
from moakit.errors import AggregatorFailed, DeadlineExceeded, ModelCallError
from moakit.events import AggregatorAttemptFailed, AggregatorStarted, TextDelta, ToolCalls
from moakit.models.base import ChatRequest, Completion
from moakit.references import Reference
from moakit.result import Decision, MemberOutput, StairStep

RequestFor = Callable[[ResolvedMember], ChatRequest]


class AggregatorChain:
    """Which aggregator answers next, and what a failure means.

    ``position`` is the candidate (0: the aggregator, then its fallbacks); every call started
    gets the next ``index`` (its place in ``AggregatorStarted`` and the trace), so calls that
    run side by side (the vote strategy's samples) never share one."""

    def __init__(self, run: Run) -> None:
        self.run = run
        self.specs = run.lineup.aggregator_specs
        self.models = run.lineup.aggregator_models
        self.layer = len(run.config.layers) + 1
        self.position = 0
        self.started = 0
        self.reasons: list[str] = []

    def start(
        self,
        request_for: RequestFor,
        references: Sequence[Reference],
        *,
        position: int | None = None,
    ) -> Call:
        """Announce a call of the current candidate (or of ``position``) and return it."""
        at = self.position if position is None else position
        spec, model = self.specs[at], self.models[at]
        index, self.started = self.started, self.started + 1
        run = self.run
        run.emit(
            AggregatorStarted(
                index=index,
                label=spec.label,
                model=spec.model,
                references=len(references),
                **run.stamp(),
            )
        )
        call = Call(spec, model, request_for(spec), self.layer, index, references=tuple(references))
        if run.ledger is not None:
            call.request, call.reserved, why = run.ledger.admit_final(spec, call.request)
            if why is not None:
                reason = f"budget: {why} would be exceeded"
                call.error = ModelCallError(reason, kind="other")
                run.decide(
                    Decision(kind="budget", layer=self.layer, detail=reason, skipped=[spec.label])
                )
        return call

    def reporter(self, text_out: Callable[[Call], bool]) -> OnFailure:
        """Emits ``AggregatorAttemptFailed`` after each failed attempt. ``text_out(call)``: the
        answer's text has gone out, so nothing may follow this failure."""
        run = self.run

        def on_failure(call: Call, error: ModelCallError, retrying: bool) -> None:
            final = error.kind == "deadline" or text_out(call)
            has_fallback = self.position + 1 < len(self.specs)
            run.emit(
                AggregatorAttemptFailed(
                    failed=call.output(run.now(), error=error.describe()),
                    will_retry=retrying or (has_fallback and not final),
                    had_text=call.had_text,
                    **run.stamp(),
                )
            )

        return on_failure

    def failed(
        self,
        call: Call,
        *,
        text_out: bool,
        partial: str,
        steps: Sequence[StairStep] = (),
    ) -> None:
        """Record ``call``'s failure, then move on to the next fallback, or raise when the
        query cannot go on: the deadline passed, text is out (``partial`` was sent and becomes
        ``result.final``), or no fallback is left."""
        run = self.run
        error = call.error
        assert error is not None
        failed = call.output(run.now(), error=error.describe())
        failed.steps = list(steps)
        run.result.aggregators.append(failed)
        if error.kind == "deadline":
            run.result.final = partial
            raise DeadlineExceeded(
                f"query deadline exceeded while aggregating ({failed.label})", result=run.result
            )
        if text_out:
            run.result.final = partial
            raise AggregatorFailed(
                f"aggregator {failed.label} failed mid-answer, after part of it was sent "
                f"({error.describe()}); no retry or fallback once text is out",
                result=run.result,
                retryable=error.retryable,
            )
        self.reasons.append(f"{failed.label}: {error.describe()}")
        self.position += 1
        if self.position == len(self.specs):
            raise AggregatorFailed(
                "every aggregator failed (" + "; ".join(self.reasons) + ")",
                result=run.result,
                retryable=error.retryable,
            )

    def answered(self, output: MemberOutput, *, send: bool) -> None:
        """``output`` is the answer. ``send``: its text has not gone out yet (no streaming)."""
        run = self.run
        run.result.aggregators.append(output)
        run.result.final = output.output or ""
        run.result.tool_calls = list(output.tool_calls)
        if send and run.result.final:
            run.emit(TextDelta(text=run.result.final, **run.stamp()))
        if output.tool_calls:
            # Checked and complete (``engine.tool_calls``): only now may they leave.
            run.emit(ToolCalls(calls=tuple(output.tool_calls), **run.stamp()))

    async def answer(self, block: str | None, references: Sequence[Reference]) -> None:
        """The whole chain over one references block: each candidate in turn until one
        answers (streamed as written when the run streams)."""
        run = self.run

        def on_text(text: str) -> None:
            run.emit(TextDelta(text=text, **run.stamp()))

        def request_for(spec: ResolvedMember) -> ChatRequest:
            return run.member_request(spec, block, final=True)

        streaming = run.streaming
        on_failure = self.reporter(lambda call: streaming and call.had_text)
        while True:
            call = self.start(request_for, references)
            completion = await call_with_retries(
                run,
                call,
                deadline_at=run.deadline_at,
                on_text=on_text if streaming else None,
                final_after_text=streaming,
                on_failure=on_failure,
            )
            if completion is not None:
                self.answered(_output(run, call, completion), send=not streaming)
                return
            self.failed(
                call, text_out=streaming and call.had_text, partial="".join(call.live_parts)
            )


def _output(run: Run, call: Call, completion: Completion) -> MemberOutput:
    return call.output(run.now(), text=completion.text, completion=completion)


async def aggregate(run: Run, references: Sequence[Reference]) -> None:
    """The final step of the layered strategy: the chain over every reference."""
    block, actions = run.lineup.references.block_recorded(references, run.config.aggregate_prompt)
    run.record_defenses(actions, layer=len(run.config.layers) + 1)
    await AggregatorChain(run).answer(block, references)
