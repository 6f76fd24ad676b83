"""Runs a stack: fan-out per layer, quorum, deadline, straggler cut-off, retries, fallbacks.

``Stack`` is itself a ``Model`` (a mixture is a model), so it can be served, evaluated, or used
as a member of another stack by code that only knows the model interface.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from moakit.config import MemberSpec, StackConfig
from moakit.errors import (
    AggregatorFailed,
    CallErrorKind,
    DeadlineExceeded,
    LayerFailed,
    ModelCallError,
)
from moakit.events import (
    AggregatorFailed as AggregatorFailedEvent,
)
from moakit.events import (
    AggregatorStarted,
    Event,
    LayerFinished,
    LayerStarted,
    MemberFinished,
    RunFinished,
    TextDelta,
)
from moakit.models.base import ChatRequest, Chunk, Completion, Message, Model, Usage
from moakit.models.registry import ResourcePool, build_model
from moakit.prompts import inject_references, with_system_prompt
from moakit.result import Attempt, LayerResult, MemberOutput, Result
from moakit.retry import backoff_delay

# Share of the deadline kept for the final aggregator: proposer layers are cut this early so a
# query that hits its deadline can still be answered from the references it has.
AGGREGATOR_RESERVE = 0.3


@dataclass
class _Call:
    """Mutable record of one member's call, readable even after its task was cancelled."""

    spec: MemberSpec
    layer: int
    index: int
    started: float
    attempts: list[Attempt] = field(default_factory=list)


class Stack(Model):
    def __init__(self, config: StackConfig, *, models: Mapping[str, Model] | None = None) -> None:
        self.config = config
        self.name = f"moa:{config.name}"
        self._overrides = dict(models or {})
        self._pool = ResourcePool()
        self._models: dict[Any, Model] = {}
        # Members with defaults applied, resolved once: queries reuse them instead of
        # re-deriving (and copying) every spec per query.
        self.layer_specs = [config.layer_members(i) for i in range(len(config.layers))]
        self.aggregator_specs = config.aggregators()
        # Build every model now so a missing key or unknown provider fails before any call.
        for spec in self._all_specs():
            self._model_for(spec)

    def _all_specs(self) -> list[MemberSpec]:
        return [*itertools.chain.from_iterable(self.layer_specs), *self.aggregator_specs]

    def _model_for(self, spec: MemberSpec) -> Model:
        if spec.model in self._overrides:
            return self._overrides[spec.model]
        key = (
            spec.provider,
            spec.model,
            spec.base_url,
            spec.api_key_env,
            repr(sorted(spec.options.items())),
        )
        if key not in self._models:
            self._models[key] = build_model(spec, self._pool)
        return self._models[key]

    def models(self) -> list[Model]:
        """Every distinct model this stack calls (built ones and overrides)."""
        unique: dict[int, Model] = {}
        for spec in self._all_specs():
            model = self._model_for(spec)
            unique.setdefault(id(model), model)
        return list(unique.values())

    async def aclose(self) -> None:
        for model in self._models.values():
            await model.aclose()
        self._models.clear()
        await self._pool.aclose()

    async def __aenter__(self) -> Stack:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- public surfaces ---------------------------------------------------------------------

    def events(self, request: ChatRequest | Sequence[Message]) -> AsyncIterator[Event]:
        """Run the stack, yielding progress events, text deltas and finally ``RunFinished``.

        Closing the iterator early (or cancelling its consumer) cancels every in-flight call.
        Raises a ``QueryFailed`` subclass, carrying the partial result, when no answer is possible.
        """
        if not isinstance(request, ChatRequest):
            request = ChatRequest(messages=list(request))
        return _Run(self, request).events()

    async def run(self, request: ChatRequest | Sequence[Message]) -> Result:
        async for event in self.events(request):
            if isinstance(event, RunFinished):
                return event.result
        raise AssertionError("a run always ends with RunFinished or an exception")

    async def stream(self, request: ChatRequest) -> AsyncIterator[Chunk]:
        async for event in self.events(request):
            if isinstance(event, TextDelta):
                yield Chunk(text=event.text)
            elif isinstance(event, RunFinished):
                agg = event.result.aggregator
                yield Chunk(
                    finish_reason=agg.finish_reason if agg else "stop", usage=event.result.usage
                )


class _Run:
    def __init__(self, stack: Stack, request: ChatRequest) -> None:
        self.stack = stack
        self.config = stack.config
        self.request = request
        # x1: every layer and the aggregator re-see exactly this conversation.
        self.conversation = [dict(m) for m in request.messages]
        self.t0 = time.monotonic()
        self.result = Result(stack=self.config.name)
        deadline = self.config.deadline_s
        self.deadline_at = self.t0 + deadline if deadline else None
        self.proposers_deadline_at = (
            self.t0 + deadline * (1 - AGGREGATOR_RESERVE) if deadline else None
        )

    def now(self) -> float:
        return time.monotonic() - self.t0

    async def events(self) -> AsyncIterator[Event]:
        references: list[str] = []
        try:
            for li in range(len(self.config.layers)):
                async for event in self._layer(li, references):
                    yield event
                layer = self.result.layers[-1]
                references = [m.output for m in layer.members if m.ok and m.output is not None]
                if self.proposers_deadline_at and time.monotonic() >= self.proposers_deadline_at:
                    break  # out of proposer time: aggregate what we have
            async for event in self._aggregate(references):
                yield event
        except BaseException as exc:
            if self.result.error is None:
                self.result.error = str(exc) or type(exc).__name__
            self.result.latency_s = self.now()
            raise
        self.result.latency_s = self.now()
        yield RunFinished(self.result)

    # -- proposer layers ---------------------------------------------------------------------

    async def _layer(self, li: int, references: list[str]) -> AsyncIterator[Event]:
        members = self.stack.layer_specs[li]
        needed = self.config.min_successful_for(li)
        layer_no = li + 1
        yield LayerStarted(layer=layer_no, members=[m.display for m in members])
        started = self.now()
        calls = [_Call(spec, layer_no, i, started) for i, spec in enumerate(members)]
        tasks = {asyncio.create_task(self._call_member(call, references)): call for call in calls}
        outputs: dict[int, MemberOutput] = {}
        cutoff_at: float | None = None
        pending = set(tasks)
        cut_reason = ""
        try:
            while pending:
                limits = [t for t in (cutoff_at, self.proposers_deadline_at) if t is not None]
                timeout = max(0.0, min(limits) - time.monotonic()) if limits else None
                done, pending = await asyncio.wait(
                    pending, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
                )
                for task in done:
                    out = task.result()
                    outputs[out.index] = out
                    yield MemberFinished(out)
                ok = [o for o in outputs.values() if o.ok]
                if cutoff_at is None and len(ok) >= needed and pending and self.config.straggler:
                    policy = self.config.straggler
                    grace = max(
                        policy.grace_s or 0.0,
                        (policy.grace_factor or 0.0) * max(o.latency_s for o in ok),
                    )
                    cutoff_at = time.monotonic() + grace
                if not done and pending:
                    now = time.monotonic()
                    if self.proposers_deadline_at is not None and now >= self.proposers_deadline_at:
                        cut_reason = "cancelled: query deadline"
                    else:
                        cut_reason = "cancelled: straggler cut-off"
                    break
        finally:
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)
        for task in pending:
            call = tasks[task]
            out = self._output(call, error=cut_reason or "cancelled", cancelled=True)
            outputs[call.index] = out
            yield MemberFinished(out)
        layer = LayerResult(
            index=layer_no,
            members=[outputs[i] for i in range(len(calls))],
            latency_s=round(self.now() - started, 6),
            min_successful=needed,
        )
        self.result.layers.append(layer)
        yield LayerFinished(layer)
        if layer.answered < needed:
            failures = [(m.label, m.error or "no answer") for m in layer.members if not m.ok]
            err = LayerFailed(
                layer_no, failures, answered=layer.answered, needed=needed, result=self.result
            )
            deadline_hit = self.proposers_deadline_at is not None and (
                time.monotonic() >= self.proposers_deadline_at
            )
            if deadline_hit:
                raise DeadlineExceeded(f"query deadline exceeded: {err}", result=self.result)
            raise err

    def _member_request(self, spec: MemberSpec, references: Sequence[str]) -> ChatRequest:
        messages = with_system_prompt(self.conversation, spec.system)
        messages = inject_references(messages, references, self.config.aggregate_prompt)
        return ChatRequest(
            messages=messages,
            temperature=spec.temperature,
            max_tokens=spec.max_tokens,
            seed=spec.seed,
            stop=spec.stop,
        )

    async def _call_member(self, call: _Call, references: Sequence[str]) -> MemberOutput:
        """One member with retries. Never raises except ``CancelledError``."""
        spec = call.spec
        model = self.stack._model_for(spec)
        request = self._member_request(spec, references)
        retries = spec.retries or 0
        error: ModelCallError | None = None
        for attempt in range(retries + 1):
            t = self.now()
            timeout, binding = self._timeout(spec, self.proposers_deadline_at)
            try:
                async with asyncio.timeout(timeout):
                    completion = await model.complete(request)
                if not completion.text.strip():
                    raise ModelCallError("empty answer", kind="empty")
            except TimeoutError:
                kind: CallErrorKind = "deadline" if binding else "timeout"
                error = ModelCallError(f"no answer within {timeout:.2f}s", kind=kind)
            except ModelCallError as exc:
                error = exc
            except Exception as exc:  # an adapter bug must fail one member, not the query
                error = ModelCallError(f"{type(exc).__name__}: {exc}", kind="other")
            else:
                call.attempts.append(
                    Attempt(
                        number=attempt + 1,
                        started_s=round(t, 6),
                        latency_s=round(self.now() - t, 6),
                    )
                )
                return self._output(call, completion=completion)
            call.attempts.append(
                Attempt(
                    number=attempt + 1,
                    started_s=round(t, 6),
                    latency_s=round(self.now() - t, 6),
                    error=error.describe(),
                )
            )
            if not error.retryable or attempt == retries:
                break
            delay = backoff_delay(self.config.retry, attempt, error.retry_after_s)
            if delay is None or not self._time_left(delay, self.proposers_deadline_at):
                break
            await asyncio.sleep(delay)
        assert error is not None
        return self._output(call, error=error.describe())

    def _timeout(self, spec: MemberSpec, deadline_at: float | None) -> tuple[float, bool]:
        """Per-call timeout, clipped by the deadline. Second value: the deadline is binding."""
        timeout = spec.timeout_s or self.config.default_timeout_s
        if deadline_at is not None:
            left = max(0.0, deadline_at - time.monotonic())
            if left < timeout:
                return left, True
        return timeout, False

    def _time_left(self, delay: float, deadline_at: float | None) -> bool:
        return deadline_at is None or time.monotonic() + delay < deadline_at

    def _output(
        self,
        call: _Call,
        *,
        completion: Completion | None = None,
        error: str | None = None,
        cancelled: bool = False,
        text: str | None = None,
    ) -> MemberOutput:
        spec = call.spec
        usage = completion.usage if completion else Usage()
        output = None
        if completion is not None:
            # The reference implementation strips every generation before reuse.
            output = text if text is not None else completion.text.strip()
        return MemberOutput(
            layer=call.layer,
            index=call.index,
            label=spec.display,
            provider=spec.provider,
            model=spec.model,
            output=output,
            error=error,
            finish_reason=completion.finish_reason if completion else None,
            truncated=bool(completion and completion.truncated),
            cancelled=cancelled,
            started_s=round(call.started, 6),
            latency_s=round(self.now() - call.started, 6),
            usage=usage,
            cost_usd=_cost(spec, usage),
            attempts=list(call.attempts),
        )

    # -- the final aggregator ----------------------------------------------------------------

    async def _aggregate(self, references: list[str]) -> AsyncIterator[Event]:
        layer_no = len(self.config.layers) + 1
        overrides = self.request
        reasons: list[str] = []
        for index, spec in enumerate(self.stack.aggregator_specs):
            spec = spec.model_copy(
                update={
                    k: v
                    for k, v in (
                        ("temperature", overrides.temperature),
                        ("max_tokens", overrides.max_tokens),
                        ("seed", overrides.seed),
                        ("stop", list(overrides.stop) if overrides.stop else None),
                    )
                    if v is not None
                }
            )
            call = _Call(spec, layer_no, index, self.now())
            yield AggregatorStarted(
                label=spec.display, model=spec.model, references=len(references)
            )
            retries = spec.retries or 0
            for attempt in range(retries + 1):
                parts: list[str] = []
                outcome: Completion | ModelCallError | None = None
                t = self.now()
                async for item in self._stream_aggregator(spec, references):
                    if isinstance(item, str):
                        parts.append(item)
                        yield TextDelta(item)
                    else:
                        outcome = item
                if isinstance(outcome, Completion) and not "".join(parts).strip():
                    outcome = ModelCallError("empty answer", kind="empty")
                assert outcome is not None
                attempt_rec = Attempt(
                    number=attempt + 1, started_s=round(t, 6), latency_s=round(self.now() - t, 6)
                )
                if isinstance(outcome, Completion):
                    call.attempts.append(attempt_rec)
                    final = "".join(parts)
                    out = self._output(call, completion=outcome, text=final)
                    self.result.aggregators.append(out)
                    self.result.final = final
                    return
                error = outcome
                call.attempts.append(attempt_rec.model_copy(update={"error": error.describe()}))
                failed = self._output(call, error=error.describe())
                if error.kind == "deadline":
                    self.result.aggregators.append(failed)
                    raise DeadlineExceeded(
                        f"query deadline exceeded while aggregating ({failed.label})",
                        result=self.result,
                    )
                more = attempt < retries and error.retryable
                delay = (
                    backoff_delay(self.config.retry, attempt, error.retry_after_s) if more else None
                )
                if more and delay is not None and self._time_left(delay, self.deadline_at):
                    yield AggregatorFailedEvent(failed, discard_text=bool(parts))
                    await asyncio.sleep(delay)
                    continue
                self.result.aggregators.append(failed)
                reasons.append(f"{failed.label}: {error.describe()}")
                yield AggregatorFailedEvent(failed, discard_text=bool(parts))
                break
        raise AggregatorFailed(
            "every aggregator failed (" + "; ".join(reasons) + ")", result=self.result
        )

    async def _stream_aggregator(
        self, spec: MemberSpec, references: list[str]
    ) -> AsyncIterator[str | Completion | ModelCallError]:
        """Stream one aggregator attempt: text pieces, then a ``Completion`` or the error.

        The call runs in its own task feeding a queue, so its timeout scope never spans a
        ``yield`` (a timeout there would cancel whatever the *consumer* is awaiting).
        """
        model = self.stack._model_for(spec)
        # The client's sampling and format parameters apply to the final aggregator only
        # (proposers answer freely). Minimal until the engine branch's generic override lands.
        extra = {
            k: getattr(self.request, k)
            for k in ("top_p", "presence_penalty", "frequency_penalty", "response_format")
            if getattr(self.request, k) is not None
        }
        request = replace(self._member_request(spec, references), **extra)
        timeout, binding = self._timeout(spec, self.deadline_at)
        queue: asyncio.Queue[Chunk | ModelCallError | None] = asyncio.Queue()

        async def pump() -> None:
            try:
                async with asyncio.timeout(timeout):
                    async for chunk in model.stream(request):
                        queue.put_nowait(chunk)
                queue.put_nowait(None)
            except TimeoutError:
                kind: CallErrorKind = "deadline" if binding else "timeout"
                queue.put_nowait(ModelCallError(f"no answer within {timeout:.2f}s", kind=kind))
            except ModelCallError as exc:
                queue.put_nowait(exc)
            except Exception as exc:  # an adapter bug fails this aggregator, not silently
                queue.put_nowait(ModelCallError(f"{type(exc).__name__}: {exc}", kind="other"))

        task = asyncio.create_task(pump())
        finish_reason: str | None = None
        usage: Usage | None = None
        parts: list[str] = []
        try:
            while True:
                item = await queue.get()
                if item is None:
                    break
                if isinstance(item, ModelCallError):
                    yield item
                    return
                if item.finish_reason is not None:
                    finish_reason = item.finish_reason
                if item.usage is not None:
                    usage = item.usage
                if item.text:
                    parts.append(item.text)
                    yield item.text
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        yield Completion(
            text="".join(parts), finish_reason=finish_reason or "stop", usage=usage or Usage()
        )


def _cost(spec: MemberSpec, usage: Usage) -> float | None:
    if spec.price_in_per_mtok is None or spec.price_out_per_mtok is None:
        return None
    return (
        usage.prompt_tokens * spec.price_in_per_mtok
        + usage.completion_tokens * spec.price_out_per_mtok
    ) / 1e6
