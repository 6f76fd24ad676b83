"""One call outside any stack (a single model under evaluation, an eval's judge) through the
engine's one retry loop (``calls.call_with_retries``): the same timeout, retries, backoff and
Retry-After handling a stack member gets, so a model measured alone is called exactly as it
would be inside a stack. Nothing is emitted: nobody watches a solo call's events."""

from __future__ import annotations

import time
from dataclasses import dataclass

from moakit.config import ResolvedMember, StackConfig
from moakit.engine.calls import Call, call_with_retries
from moakit.engine.run import Discard, Run
from moakit.errors import ModelCallError
from moakit.models.base import ChatRequest, Completion, Model
from moakit.policies import RetryPolicy
from moakit.result import MemberOutput, Result


@dataclass(frozen=True)
class SoloAnswer:
    """What the call produced: the member's output (attempts, usage, cost, error) and either
    the completion or the last attempt's error."""

    output: MemberOutput
    completion: Completion | None
    error: ModelCallError | None


class _SoloRun(Run):
    """The part of a run the retry loop reads (clock, timeouts, retry policy), for one call
    with no stack around it: no deadline, no events, no references."""

    def __init__(self, spec: ResolvedMember, request: ChatRequest, retry: RetryPolicy) -> None:
        member = spec.model_dump()
        self.config = StackConfig.model_validate(
            {"name": spec.label, "layers": [[member]], "aggregator": member, "retry": retry}
        )
        self.request = request
        self.id = ""
        self.streaming = False
        self.conversation = [dict(m) for m in request.messages]
        self.t0 = time.monotonic()
        self.result = Result(stack=spec.label)
        self.deadline_at = None
        self.proposers_deadline_at = None
        self.final_overrides = {}
        self.channel = Discard()
        self.live = False
        self.member_deltas = False


async def call_alone(
    model: Model,
    spec: ResolvedMember,
    request: ChatRequest,
    *,
    retry: RetryPolicy | None = None,
) -> SoloAnswer:
    """Call ``model`` with ``request`` as ``spec`` says (its timeout and retries) under
    ``retry``'s backoff. Never raises a ``ModelCallError``: a failure is in the answer."""
    run = _SoloRun(spec, request, retry or RetryPolicy())
    call = Call(spec=spec, model=model, request=request, layer=1, index=0)
    completion = await call_with_retries(run, call, deadline_at=None)
    if completion is None:
        error = call.error or ModelCallError("no answer")
        return SoloAnswer(call.output(run.now(), error=error.describe()), None, error)
    output = call.output(run.now(), text=completion.text, completion=completion)
    return SoloAnswer(output, completion, None)
