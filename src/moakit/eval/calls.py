"""How one system answers one conversation: the shared, wrapped models (``ModelFactory``), a
single model called alone (through the engine's one retry loop, ``engine.solo``), and a stack
run with its time to first token and what it is doing (for progress inside a slow item)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence

from moakit.config import MemberSpec, ResolvedMember, StackConfig
from moakit.engine import Stack
from moakit.engine.solo import call_alone
from moakit.errors import ConfigError
from moakit.eval.cache import CachedModel, EvalCache, endpoint_key, model_identity
from moakit.eval.redteam import InjectingModel
from moakit.events import (
    AggregatorStarted,
    Event,
    LayerStarted,
    MemberFinished,
    RunFinished,
    TextDelta,
    ToolCalls,
)
from moakit.executors.base import EndpointLimits, Gate
from moakit.messages import ToolSpec
from moakit.models.base import ChatRequest, Chunk, Message, Model
from moakit.models.registry import ResourcePool, build_model
from moakit.models.wrappers import ConcurrencyLimitedModel, ScrubbingModel, WrapperModel
from moakit.prompts import with_system_prompt
from moakit.result import Result
from moakit.secrets import secret_values

# What a call is doing, in a few words, for progress inside a slow item.
OnActivity = Callable[[str], None]


def solo_member(spec: MemberSpec) -> ResolvedMember:
    """``spec`` with every default decided as a stack would (timeout, retries, provider, key
    variable) for a model called alone. A value the spec sets, ``retries = 0`` included, is
    kept."""
    member = spec.model_dump(exclude={"fallbacks"}, exclude_unset=True)
    config = StackConfig.model_validate({"layers": [[member]], "aggregator": member})
    return config.aggregators()[0]


class ModelFactory:
    """One wrapped model per distinct identity, shared by every system of the run: the cache
    outside, the endpoint's concurrency limit inside (a cache hit takes no slot).
    ``shared_limits``: on a cluster, the run's one limiter per remote endpoint for every
    worker (it holds ``limits`` and ``default_limit`` itself); without it, this process's."""

    def __init__(
        self,
        cache: EvalCache,
        limits: Mapping[str, int],
        default_limit: int,
        *,
        shared_limits: EndpointLimits | None = None,
    ) -> None:
        self.cache = cache
        self.limits = dict(limits)
        self.default_limit = default_limit
        self.shared_limits = shared_limits
        self.pool = ResourcePool()
        self._models: dict[str, Model] = {}
        self._limiters: dict[str, asyncio.Semaphore] = {}

    def model_for(self, spec: MemberSpec, *, cached: bool = True) -> Model:
        identity = model_identity(spec)
        key = json.dumps([identity, cached], sort_keys=True)
        if key not in self._models:
            inner: Model = build_model(spec, self.pool)
            secrets = secret_values([spec.api_key_env] if spec.api_key_env else [])
            if secrets:  # innermost: the response cache and the records see scrubbed text only
                inner = ScrubbingModel(inner, secrets)
            endpoint = endpoint_key(spec)
            if self.shared_limits is not None and endpoint != "local":
                inner = ConcurrencyLimitedModel(inner, Gate(self.shared_limits, endpoint))
                self._models[key] = CachedModel(inner, self.cache, identity, live=not cached)
                return self._models[key]
            slots = self.limits.get(endpoint)
            if slots is None and spec.provider != "local":
                slots = self.default_limit
            # The embedded model needs no limit of ours: its scheduler decodes up to n_seq_max
            # sequences as one batch and queues the rest (a limit of 1 here made the three
            # samples of `local` run one after another).
            if slots is not None:
                if endpoint not in self._limiters:
                    self._limiters[endpoint] = asyncio.Semaphore(slots)
                inner = ConcurrencyLimitedModel(inner, self._limiters[endpoint])
            self._models[key] = CachedModel(inner, self.cache, identity, live=not cached)
        return self._models[key]

    def judge(self, spec: MemberSpec) -> Model:
        """The judge: its cached model, each call retried by the engine's loop."""
        return RetriedModel(self.model_for(spec), solo_member(spec))

    def stack(
        self,
        config: StackConfig,
        *,
        live: bool = False,
        compromised: Mapping[str, str] | None = None,
    ) -> Stack:
        # A staircase run depends on *when* each chunk of each answer arrives; a cache hit
        # delivers a whole answer at once, which would turn it into plain wait-for-all MoA. So
        # its calls are always live (with the same seeds, the proposals are the same anyway).
        cached = config.strategy != "staircase" and not live
        injected = dict(compromised or {})

        def wrap(model: Model, spec: ResolvedMember) -> Model:
            # Every member gets the shared model of its own identity (provider, model,
            # endpoint, options): two members naming one model on two endpoints stay apart.
            ours = self.model_for(spec, cached=cached)
            # A compromised member's payload is appended outside the cache: its honest answer
            # is the clean stack's cached one, the payload is added on every call.
            answer = injected.get(spec.label)
            return ours if answer is None else InjectingModel(ours, answer=answer)

        return Stack(config, wrap=wrap)

    async def aclose(self) -> None:
        for model in self._models.values():
            await model.aclose()
        await self.pool.aclose()


class RetriedModel(WrapperModel):
    """A model whose every call goes through the engine's retry loop (``call_alone``), as a
    stack member's would; a call that fails after its retries raises its last error."""

    complete = Model.complete  # through this wrapper's stream

    def __init__(self, wrapped: Model, spec: ResolvedMember) -> None:
        super().__init__(wrapped)
        self.spec = spec

    async def stream(self, request: ChatRequest) -> AsyncIterator[Chunk]:
        answer = await call_alone(self.wrapped, self.spec, request)
        if answer.completion is None:
            assert answer.error is not None
            raise answer.error
        yield Chunk(text=answer.completion.text)
        yield Chunk(finish_reason=answer.completion.finish_reason, usage=answer.completion.usage)


def member_request(
    spec: MemberSpec, messages: Sequence[Message], tools: Sequence[ToolSpec] = ()
) -> ChatRequest:
    """Exactly what the engine sends a first-layer member (so the cache serves both); with
    ``tools``, what it sends a final aggregator offered them."""
    return ChatRequest(
        messages=with_system_prompt(messages, spec.system),
        temperature=spec.temperature,
        max_tokens=spec.max_tokens,
        seed=spec.seed,
        stop=spec.stop,
        tools=tuple(tools),
    )


async def run_single(
    model: Model,
    spec: MemberSpec,
    messages: Sequence[Message],
    tools: Sequence[ToolSpec] = (),
) -> Result:
    """``spec``'s model alone on ``messages`` (offered ``tools``), as a one-call ``Result``.
    A model that cannot be sent tools is refused before any call, as a stack refuses one."""
    if tools and not model.profile.tools:
        raise ConfigError(f"model {spec.display!r} cannot call tools", field="tools")
    resolved = solo_member(spec)
    answer = await call_alone(model, resolved, member_request(resolved, messages, tools))
    out = answer.output
    if out.output is not None:
        out = out.model_copy(update={"output": out.output.strip()})
    return Result(
        stack=spec.display,
        final=out.output or "",
        tool_calls=list(out.tool_calls),
        aggregators=[out],
        latency_s=out.latency_s,
        error=out.error,
    )


async def run_stack(
    stack: Stack,
    messages: Sequence[Message],
    on_activity: OnActivity | None = None,
    tools: Sequence[ToolSpec] = (),
) -> tuple[Result, float | None]:
    """The stack's result (offered ``tools``: its final aggregator may answer with calls)
    and its time to the first token of the final answer."""
    t0 = time.monotonic()
    ttft: float | None = None
    watch = _Activity(on_activity) if on_activity else None
    request = ChatRequest(messages=list(messages), tools=tuple(tools))
    async for event in stack.events(request):
        if watch is not None:
            watch(event)
        # The first of the answer: its text, or its tool calls (they leave whole).
        if ttft is None and (
            (isinstance(event, TextDelta) and event.text) or isinstance(event, ToolCalls)
        ):
            ttft = time.monotonic() - t0
        elif isinstance(event, RunFinished):
            return event.result, ttft
    raise AssertionError("a run ends with RunFinished or raises")


class _Activity:
    """A stack's events as a few words: which layer, how many members answered, how much of
    the final answer is written."""

    def __init__(self, report: OnActivity) -> None:
        self.report = report
        self.layer = 0
        self.size = 0
        self.answered = 0
        self.written = 0

    def __call__(self, event: Event) -> None:
        if isinstance(event, LayerStarted):
            self.layer, self.size, self.answered = event.layer, len(event.members), 0
            self.report(f"layer {self.layer}: 0/{self.size} answered")
        elif isinstance(event, MemberFinished) and event.output.layer == self.layer:
            self.answered += 1
            self.report(f"layer {self.layer}: {self.answered}/{self.size} answered")
        elif isinstance(event, AggregatorStarted):
            self.written = 0
            self.report(f"aggregating {event.references} references")
        elif isinstance(event, TextDelta):
            self.written += len(event.text)
            self.report(f"aggregator writing: {self.written} chars")
