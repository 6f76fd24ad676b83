"""The final aggregator and its fallbacks, shared by every strategy, and the stream rule.

Stream rule: with ``run.streaming``, once an aggregator attempt has sent its first TextDelta, a
failure of that attempt is final (no retry, no fallback): ``AggregatorFailed`` carries the text
already sent as ``result.final``. Before that first delta, retries and fallbacks are free.
Without streaming, text is committed only when an attempt completes, so retries and fallbacks
stay free and a failed attempt's text never reaches ``result.final``.
"""

from __future__ import annotations

from collections.abc import Sequence

from moakit.config import ResolvedMember
from moakit.engine.calls import Call, OnFailure, call_with_retries
from moakit.engine.run import Run
from moakit.errors import AggregatorFailed, DeadlineExceeded, ModelCallError
from moakit.events import AggregatorAttemptFailed, AggregatorStarted, TextDelta
from moakit.models.base import ChatRequest, Model
from moakit.references import Reference


def _report_failure(run: Run, *, has_fallback: bool) -> OnFailure:
    def on_failure(call: Call, error: ModelCallError, retrying: bool) -> None:
        final = error.kind == "deadline" or (run.streaming and call.had_text)
        run.emit(
            AggregatorAttemptFailed(
                failed=call.output(run.now(), error=error.describe()),
                will_retry=retrying or (has_fallback and not final),
                had_text=call.had_text,
                **run.stamp(),
            )
        )

    return on_failure


def start_aggregator(
    run: Run,
    index: int,
    spec: ResolvedMember,
    model: Model,
    request: ChatRequest,
    *,
    references: int,
) -> Call:
    """Announce aggregator ``index`` (0: the aggregator, then its fallbacks) and its call;
    shared by every strategy that aggregates."""
    run.emit(
        AggregatorStarted(
            index=index, label=spec.label, model=spec.model, references=references, **run.stamp()
        )
    )
    return Call(spec, model, request, len(run.config.layers) + 1, index)


async def aggregate(run: Run, references: Sequence[Reference]) -> None:
    layer_no = len(run.config.layers) + 1
    block, actions = run.stack.references.block_recorded(references, run.config.aggregate_prompt)
    run.record_defenses(actions, layer=layer_no)
    specs = run.stack.aggregator_specs
    models = run.stack.aggregator_models
    reasons: list[str] = []
    last_error: ModelCallError | None = None

    def on_text(text: str) -> None:
        run.emit(TextDelta(text=text, **run.stamp()))

    for index, (spec, model) in enumerate(zip(specs, models, strict=True)):
        request = run.member_request(spec, block, final=True)
        call = start_aggregator(run, index, spec, model, request, references=len(references))
        on_failure = _report_failure(run, has_fallback=index + 1 < len(specs))
        completion = await call_with_retries(
            run,
            call,
            deadline_at=run.deadline_at,
            on_text=on_text if run.streaming else None,
            final_after_text=run.streaming,
            on_failure=on_failure,
        )
        if completion is not None:
            run.result.aggregators.append(
                call.output(run.now(), text=completion.text, completion=completion)
            )
            run.result.final = completion.text
            if not run.streaming:
                run.emit(TextDelta(text=completion.text, **run.stamp()))
            return
        error = last_error = call.error
        assert error is not None
        failed = call.output(run.now(), error=error.describe())
        run.result.aggregators.append(failed)
        if error.kind == "deadline":
            raise DeadlineExceeded(
                f"query deadline exceeded while aggregating ({failed.label})", result=run.result
            )
        if run.streaming and call.had_text:
            run.result.final = "".join(call.live_parts)
            raise AggregatorFailed(
                f"aggregator {failed.label} failed mid-answer, after part of it was sent "
                f"({error.describe()}); no retry or fallback once text is out",
                result=run.result,
                retryable=error.retryable,
            )
        reasons.append(f"{failed.label}: {error.describe()}")
    raise AggregatorFailed(
        "every aggregator failed (" + "; ".join(reasons) + ")",
        result=run.result,
        retryable=last_error is not None and last_error.retryable,
    )
