"""One call outside any stack (a single model under evaluation, an eval's judge) through the
engine's one retry loop (``calls.call_with_retries``): the same timeout, retries, backoff and
Retry-After handling a stack member gets, so a model measured alone is called exactly as it
would be inside a stack. Nothing is emitted: nobody watches a solo call's events."""

from __future__ import annotations

from dataclasses import dataclass

from moakit.config import ResolvedMember, StackConfig
from moakit.engine.calls import Call, call_with_retries
from moakit.engine.run import Lineup, Run
from moakit.errors import ModelCallError
from moakit.models.base import ChatRequest, Completion, Model
from moakit.policies import RetryPolicy
from moakit.references import ReferencePipeline
from moakit.result import MemberOutput


@dataclass(frozen=True)
class SoloAnswer:
    """What the call produced: the member's output (attempts, usage, cost, error) and either
    the completion or the last attempt's error."""

    output: MemberOutput
    completion: Completion | None
    error: ModelCallError | None


def _solo_run(model: Model, spec: ResolvedMember, request: ChatRequest, retry: RetryPolicy) -> Run:
    """A run around one call with no stack around it (no deadline, no events, no
    references): what the retry loop reads of a run, the clock, timeouts and the policy."""
    member = spec.model_dump()
    config = StackConfig.model_validate(
        {"name": spec.label, "layers": [[member]], "aggregator": member, "retry": retry}
    )
    lineup = Lineup(
        config=config,
        layer_specs=[[spec]],
        layer_models=[[model]],
        aggregator_specs=[spec],
        aggregator_models=[model],
        references=ReferencePipeline(),
    )
    return Run(lineup, request, run_id="", streaming=False).unwatched()


async def call_alone(
    model: Model,
    spec: ResolvedMember,
    request: ChatRequest,
    *,
    retry: RetryPolicy | None = None,
) -> SoloAnswer:
    """Call ``model`` with ``request`` as ``spec`` says (its timeout and retries) under
    ``retry``'s backoff. Never raises a ``ModelCallError``: a failure is in the answer."""
    run = _solo_run(model, spec, request, retry or RetryPolicy())
    call = Call(spec=spec, model=model, request=request, layer=1, index=0)
    completion = await call_with_retries(run, call, deadline_at=None)
    if completion is None:
        error = call.error or ModelCallError("no answer")
        return SoloAnswer(call.output(run.now(), error=error.describe()), None, error)
    output = call.output(run.now(), text=completion.text, completion=completion)
    return SoloAnswer(output, completion, None)
