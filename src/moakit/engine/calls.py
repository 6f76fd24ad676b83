"""The one retry loop, shared by proposers and aggregators.

A call is one member's (or aggregator's) request with its attempts. ``call_with_retries`` runs
attempts until one answers, the error is not worth another try, the retries are spent or the
deadline leaves no room; it never raises except ``CancelledError``. What to do with a failure
(degrade the layer, fall back, fail the query) is the caller's business.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from moakit.config import ResolvedMember
from moakit.engine.budget import Cost
from moakit.engine.member_tools import answer_with_tools, with_builtin_tools
from moakit.engine.run import Run
from moakit.engine.tool_calls import check_tool_calls
from moakit.errors import CallErrorKind, ModelCallError
from moakit.events import MemberStarted
from moakit.messages import ToolCall
from moakit.models.base import ChatRequest, Completion, Model, Usage
from moakit.references import Reference
from moakit.result import Attempt, Decision, MemberOutput, ToolExchange
from moakit.retry import backoff_delay

OnText = Callable[[str], None]
NO_USAGE = Usage()  # (frozen: one instance serves every call that reports none)
# (call, error, retrying): called after each failed attempt, before any backoff.
OnFailure = Callable[["Call", ModelCallError, bool], None]


@dataclass
class Call:
    """Mutable record of one call, readable even after its task was cancelled."""

    spec: ResolvedMember
    model: Model
    request: ChatRequest
    layer: int  # 1-based
    index: int  # 0-based
    # The references in ``request`` (after the stack's transforms and defenses): what this
    # call was shown, as the trace records it. A staircase writer's change step by step.
    references: Sequence[Reference] = ()
    attempts: list[Attempt] = field(default_factory=list)
    error: ModelCallError | None = None  # the last failed attempt's
    # What the query's budget set aside for the attempt about to run (``engine.budget``).
    reserved: Cost | None = None
    # A tool-using member's built-in tool exchanges in its current attempt.
    exchanges: list[ToolExchange] = field(default_factory=list)
    # The attempt in flight: its start, first-token time, text so far and reported usage.
    live_started: float | None = None
    live_ttft: float | None = None
    live_parts: list[str] = field(default_factory=list)
    live_usage: Usage | None = None

    @property
    def had_text(self) -> bool:
        """The current (or last) attempt produced text."""
        return bool(self.live_parts)

    def begin(self, now: float) -> None:
        # Fresh lists for a retry (an earlier attempt's may have been handed out); a first
        # attempt keeps the empty ones it was built with.
        if self.exchanges:
            self.exchanges = []
        self.live_started = now
        self.live_ttft = None
        if self.live_parts:
            self.live_parts = []
        self.live_usage = None

    def end(self, now: float, *, usage: Usage, error: str | None = None) -> None:
        started = self.live_started if self.live_started is not None else now
        self.attempts.append(
            Attempt(
                number=len(self.attempts) + 1,
                started_s=round(started, 6),
                latency_s=round(now - started, 6),
                ttft_s=None if self.live_ttft is None else round(self.live_ttft, 6),
                error=error,
                usage=usage,
            )
        )
        self.live_started = None

    def cut(self, now: float, reason: str) -> None:
        """Record the attempt in flight as cancelled (straggler cut-off, deadline, caller)."""
        if self.live_started is not None:
            self.end(now, usage=self.live_usage or NO_USAGE, error=reason)

    def output(
        self,
        now: float,
        *,
        text: str | None = None,
        completion: Completion | None = None,
        error: str | None = None,
        cancelled: bool = False,
    ) -> MemberOutput:
        spec = self.spec
        attempts = self.attempts
        usage = attempts[0].usage if attempts else NO_USAGE
        for attempt in attempts[1:]:
            usage = usage + attempt.usage
        started = self.attempts[0].started_s if self.attempts else now
        return MemberOutput(
            layer=self.layer,
            index=self.index,
            label=spec.label,
            provider=spec.provider,
            model=spec.model,
            output=text if completion is not None else None,
            error=error,
            finish_reason=completion.finish_reason if completion else None,
            tool_calls=list(completion.tool_calls) if completion else [],
            # (Validation copies a list: the output does not share this call's lists.)
            tool_exchanges=self.exchanges,
            truncated=bool(completion and completion.truncated),
            cancelled=cancelled,
            started_s=round(started, 6),
            latency_s=round(now - started, 6),
            ttft_s=self.attempts[-1].ttft_s if completion and self.attempts else None,
            usage=usage,
            cost_usd=cost(spec, usage),
            attempts=self.attempts,
        )


async def call_with_retries(
    run: Run,
    call: Call,
    *,
    deadline_at: float | None,
    on_text: OnText | None = None,
    final_after_text: bool = False,
    on_failure: OnFailure | None = None,
    allow_empty: bool = False,
) -> Completion | None:
    """Attempts until one answers (its ``Completion``) or the call gives up (``None``; the
    reason is ``call.error``). ``final_after_text``: an attempt that failed after producing
    text is not retried (the stream rule: that text has been shown). ``allow_empty``: an empty
    answer is an answer (a continuation of a partial answer may have nothing to add)."""
    if call.error is not None and not call.attempts:
        return None  # refused before it started (the query's budget cannot afford it)
    retries = call.spec.retries
    for number in range(retries + 1):
        completion = await _attempt(run, call, deadline_at, on_text, allow_empty)
        if completion is not None:
            return completion
        error = call.error
        assert error is not None
        retrying = (
            number < retries
            and error.retryable
            and error.kind != "deadline"
            and not (final_after_text and call.had_text)
        )
        delay = backoff_delay(run.config.retry, number, error.retry_after_s) if retrying else None
        retrying = delay is not None and run.time_left(delay, deadline_at)
        if retrying and run.ledger is not None:
            call.reserved, why = run.ledger.admit(call.spec, call.request)
            if why is not None:
                retrying = False
                run.decide(
                    Decision(
                        kind="budget",
                        layer=call.layer,
                        detail=f"no retry of {call.spec.label}: {why} would be exceeded",
                        skipped=[call.spec.label],
                    )
                )
        if on_failure is not None:
            on_failure(call, error, retrying)
        if not retrying or delay is None:
            return None
        await asyncio.sleep(delay)
    return None


async def _attempt(
    run: Run,
    call: Call,
    deadline_at: float | None,
    on_text: OnText | None,
    allow_empty: bool = False,
) -> Completion | None:
    spec = call.spec
    started = run.now()
    call.begin(started)
    if run.live:
        run.emit(
            MemberStarted(
                layer=call.layer,
                index=call.index,
                label=spec.label,
                provider=spec.provider,
                model=spec.model,
                attempt=len(call.attempts) + 1,
                request=call.request,
                references=tuple(call.references),
                **run.stamp(),
            )
        )
    timeout, binding = run.timeout(spec, deadline_at)
    error: ModelCallError | None = None
    completion: Completion | None = None
    try:
        async with run.expiry(timeout, deadline_at if binding else None):
            if call.spec.tools and not call.request.tools:
                completion = await _with_tools(run, call, started, on_text)
            elif on_text is None and not run.member_ttft and _has_plain_request(call.model):
                # (``_ask``'s plain branch, inline: this is every call's path.)
                completion = await call.model.complete(call.request)
                call.live_usage = completion.usage
            else:
                completion = await _streamed(run, call, started, on_text, call.request)
        if completion.tool_calls or call.request.tools:
            checked = await check_tool_calls(completion.tool_calls, call.request)
            completion = dataclasses.replace(completion, tool_calls=checked)
        if not allow_empty and completion.empty:
            error = ModelCallError("empty answer", kind="empty")
    except TimeoutError:
        kind: CallErrorKind = "deadline" if binding else "timeout"
        error = ModelCallError(f"no answer within {timeout:.2f}s", kind=kind)
    except ModelCallError as exc:
        error = exc
    except Exception as exc:  # an adapter bug must fail this call, not the query
        error = ModelCallError(f"{type(exc).__name__}: {exc}", kind="other")
    usage = call.live_usage or NO_USAGE
    if run.ledger is not None and call.reserved is not None:
        run.ledger.settle(call.spec, call.reserved, (error.usage if error else None) or usage)
        call.reserved = None
    if error is not None or completion is None:
        call.error = error or ModelCallError("no answer", kind="other")
        call.end(run.now(), usage=call.error.usage or usage, error=call.error.describe())
        return None
    call.end(run.now(), usage=usage)
    if completion.finish_reason is not None and completion.usage is usage:
        return completion
    return Completion(
        text=completion.text,
        finish_reason=completion.finish_reason or "stop",
        usage=usage,
        tool_calls=completion.tool_calls,
    )


async def _with_tools(run: Run, call: Call, started: float, on_text: OnText | None) -> Completion:
    """A tool-using member's answer (``engine.member_tools``). Its own function, so that the
    common path through ``_attempt`` builds no closure (and no cells) per call."""
    completion = await answer_with_tools(
        lambda request: _ask(run, call, started, on_text, request),
        with_builtin_tools(call.request, list(call.spec.tools), call.spec.tool_choice),
        call.exchanges,
    )
    call.live_usage = completion.usage
    return completion


async def _ask(
    run: Run, call: Call, started: float, on_text: OnText | None, request: ChatRequest
) -> Completion:
    """One request of ``call``: plain when nobody reads its text as it is written (cheaper for
    the backend and for us than parsing a stream token by token), else streamed."""
    if on_text is None and not run.member_ttft and _has_plain_request(call.model):
        completion = await call.model.complete(request)
        call.live_usage = completion.usage
        return completion
    return await _streamed(run, call, started, on_text, request)


def _has_plain_request(model: Model) -> bool:
    """Whether ``model`` answers a plain request cheaper than its stream. One whose
    ``complete`` only collects its stream (the embedded model, test doubles) is read as a stream
    here: the same work, one layer less, and its time to first token comes free."""
    return type(model).complete is not Model.complete


async def _streamed(
    run: Run, call: Call, started: float, on_text: OnText | None, request: ChatRequest
) -> Completion:
    """The call's answer as it streams: each chunk's text goes to ``on_text`` and into
    ``call.live_parts`` (what the stream rule and a cut call's record read). A tool-using
    member's later rounds add to those parts; the answer is this request's text."""
    parts = call.live_parts
    first = len(parts)
    usage: Usage | None = None
    tool_calls: list[ToolCall] = []
    finish_reason: str | None = None
    chunks = call.model.stream(request)
    try:
        async for chunk in chunks:
            if chunk.text:
                if not parts:
                    call.live_ttft = run.now() - started
                parts.append(chunk.text)
                if on_text is not None:
                    on_text(chunk.text)
            if chunk.tool_calls:
                tool_calls.extend(chunk.tool_calls)
            if chunk.finish_reason is not None:
                finish_reason = chunk.finish_reason
            if chunk.usage is not None:
                call.live_usage = usage = chunk.usage
    except BaseException:
        # Stopped early (timeout, cancellation, error): close the stream now, so it releases
        # its connection or limiter slot at once, not when collected.
        await _close(chunks)
        raise
    return Completion(
        text="".join(parts[first:]),
        finish_reason=finish_reason,
        usage=usage or Usage(),
        tool_calls=tuple(tool_calls),
    )


async def _close(chunks: object) -> None:
    aclose = getattr(chunks, "aclose", None)
    if aclose is not None:
        await aclose()


def cost(spec: ResolvedMember, usage: Usage) -> float | None:
    if spec.price_in_per_mtok is None or spec.price_out_per_mtok is None:
        return None
    return (
        usage.prompt_tokens * spec.price_in_per_mtok
        + usage.completion_tokens * spec.price_out_per_mtok
    ) / 1e6
