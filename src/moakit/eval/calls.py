"""How one system answers one conversation: the shared, wrapped models (``ModelFactory``), a
single model called directly, and a stack run with its time to first token."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Mapping, Sequence

from moakit.config import DEFAULT_PROVIDER, MemberSpec, StackConfig
from moakit.defenses.redteam import injecting
from moakit.engine import Stack
from moakit.errors import MoaError
from moakit.eval.cache import (
    CachedModel,
    ResponseCache,
    RetryingModel,
    endpoint_key,
    model_identity,
)
from moakit.events import RunFinished, TextDelta
from moakit.models.base import ChatRequest, Message, Model, collect
from moakit.models.registry import ResourcePool, build_model
from moakit.models.wrappers import ConcurrencyLimitedModel, ScrubbingModel
from moakit.prompts import with_system_prompt
from moakit.result import MemberOutput, Result
from moakit.secrets import secret_values


class ModelFactory:
    """One wrapped model per distinct identity, shared by every system of the run: the cache
    outside, the endpoint's concurrency limit inside (a cache hit takes no slot)."""

    def __init__(self, cache: ResponseCache, limits: Mapping[str, int], default_limit: int) -> None:
        self.cache = cache
        self.limits = dict(limits)
        self.default_limit = default_limit
        self.pool = ResourcePool()
        self._models: dict[str, Model] = {}
        self._limiters: dict[str, asyncio.Semaphore] = {}

    def direct_model_for(self, spec: MemberSpec, *, live: bool = False) -> Model:
        """For calls outside a stack (single model, judge): the same model plus the engine's
        timeout and retry policy, which a stack would otherwise apply."""
        return RetryingModel(
            self.model_for(spec, cached=not live),
            retries=spec.retries or 2,
            timeout_s=spec.timeout_s or 120.0,
        )

    def model_for(self, spec: MemberSpec, *, cached: bool = True) -> Model:
        identity = model_identity(spec)
        key = json.dumps([identity, cached], sort_keys=True)
        if key not in self._models:
            inner: Model = build_model(spec, self.pool)
            secrets = secret_values([spec.api_key_env] if spec.api_key_env else [])
            if secrets:  # innermost: the response cache and the records see scrubbed text only
                inner = ScrubbingModel(inner, secrets)
            endpoint = endpoint_key(spec)
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

    def stack(
        self,
        config: StackConfig,
        *,
        live: bool = False,
        compromised: Mapping[str, str] | None = None,
    ) -> Stack:
        # Today's engine takes overrides by model name; one model name is one identity here.
        specs = [m for i in range(len(config.layers)) for m in config.layer_members(i)]
        specs += config.aggregators()
        # A staircase run depends on *when* each chunk of each answer arrives; a cache hit
        # delivers a whole answer at once, which would turn it into plain wait-for-all MoA. So
        # its calls are always live (with the same seeds, the proposals are the same anyway).
        cached = config.strategy != "staircase" and not live
        models = {s.model: self.model_for(s, cached=cached) for s in specs}
        # A compromised member's payload is appended outside the cache: its honest answer is
        # the clean stack's cached one, the payload is added on every call.
        wrap = injecting(compromised) if compromised else None
        return Stack(config, models=models, wrap=wrap)

    async def aclose(self) -> None:
        for model in self._models.values():
            await model.aclose()
        await self.pool.aclose()


def member_request(spec: MemberSpec, messages: Sequence[Message]) -> ChatRequest:
    """Exactly what the engine sends a first-layer member (so the cache serves both)."""
    return ChatRequest(
        messages=with_system_prompt(messages, spec.system),
        temperature=spec.temperature,
        max_tokens=spec.max_tokens,
        seed=spec.seed,
        stop=spec.stop,
    )


async def run_single(model: Model, spec: MemberSpec, messages: Sequence[Message]) -> Result:
    t0 = time.monotonic()
    out = MemberOutput(
        layer=1,
        index=0,
        label=spec.display,
        provider=spec.provider or DEFAULT_PROVIDER,
        model=spec.model,
    )
    try:
        completion = await collect(model.stream(member_request(spec, messages)))
    except MoaError as exc:
        out.error = str(exc)
    except Exception as exc:  # an adapter bug fails this item, as the engine does for members
        out.error = f"{type(exc).__name__}: {exc}"
    else:
        out.output = completion.text.strip()
        out.usage = completion.usage
        out.finish_reason = completion.finish_reason
        out.truncated = completion.truncated
    out.latency_s = round(time.monotonic() - t0, 6)
    result = Result(
        stack=spec.display,
        final=out.output or "",
        aggregators=[out],
        latency_s=out.latency_s,
        error=out.error,
    )
    return result


async def run_stack(stack: Stack, messages: Sequence[Message]) -> tuple[Result, float | None]:
    t0 = time.monotonic()
    ttft: float | None = None
    async for event in stack.events(ChatRequest(messages=list(messages))):
        if isinstance(event, TextDelta) and ttft is None and event.text:
            ttft = time.monotonic() - t0
        elif isinstance(event, RunFinished):
            return event.result, ttft
    raise AssertionError("a run ends with RunFinished or raises")
