"""``Stack``: a MoA stack as a ``Model`` (a mixture is a model), so it can be served, evaluated,
or used as a member of another stack by code that only knows the model interface.

Every model a stack calls is resolved here once: built from its member spec (or taken from
``models=``), capped by the endpoint's shared concurrency limiter, then passed through ``wrap=``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping, Sequence
from contextlib import aclosing
from typing import Any

from moakit.config import EndpointId, MemberSpec, ResolvedMember, StackConfig, config_hash
from moakit.engine.observers import Observer, Observers
from moakit.engine.run import Lineup, MemberRouter, Run
from moakit.engine.strategies import strategy_for
from moakit.engine.tool_calls import check_tool_specs
from moakit.errors import ConfigError, QueryFailed, StackFailed
from moakit.events import Event, RunFailed, RunFinished, RunStarted, TextDelta, ToolCalls
from moakit.messages import MessagesLike, ToolSpec, as_messages
from moakit.models.base import ChatRequest, Chunk, Completion, Model
from moakit.models.profile import ModelProfile
from moakit.models.provider import ResourcePool
from moakit.models.registry import build_model
from moakit.models.wrappers import ConcurrencyLimitedModel, ScrubbingModel
from moakit.plugins import registry
from moakit.policies import BudgetConfig
from moakit.references import ReferencePipeline
from moakit.result import Result
from moakit.secrets import secret_values

Wrap = Callable[[Model, ResolvedMember], Model]


class Stack(Model):
    def __init__(
        self,
        config: StackConfig,
        *,
        models: Mapping[str, Model] | None = None,
        wrap: Wrap | None = None,
        references: ReferencePipeline | None = None,
    ) -> None:
        self.config = config
        self.name = f"moa:{config.name}"
        self.config_hash = config_hash(config)
        self.strategy = strategy_for(config.strategy)
        self.references = references or ReferencePipeline.from_config(config.references, config)
        self._overrides = dict(models or {})
        self._pool = ResourcePool()
        self._built: dict[Any, Model] = {}
        self.layer_specs = [config.layer_members(i) for i in range(len(config.layers))]
        self.aggregator_specs = config.aggregators()
        self._limiters = self._endpoint_limiters()
        # Configured key values (and the environment's key-like variables): scrubbed from what
        # every member says, innermost, so nothing downstream ever sees one.
        self._secrets = secret_values(s.api_key_env for s in self._all_specs() if s.api_key_env)
        self._scrubbed: dict[int, Model] = {}
        # Every model is built now, so a missing key or unknown provider fails before any call.
        self.layer_models = [[self._member_model(s, wrap) for s in ss] for ss in self.layer_specs]
        self.aggregator_models = [self._member_model(s, wrap) for s in self.aggregator_specs]
        # What the stack can be sent as a model: the final request's parameters go to
        # whichever aggregator answers, so each must honour them; a stack never continues a
        # partial answer of its own.
        profiles = [m.profile for m in self.aggregator_models]
        self.profile = ModelProfile(
            response_format=all(p.response_format for p in profiles),
            penalties=all(p.penalties for p in profiles),
            tools=all(p.tools for p in profiles) and getattr(self.strategy, "tools", False),
            images=all(p.images for p in profiles),
        )
        self.lineup = Lineup(
            config=config,
            layer_specs=self.layer_specs,
            layer_models=self.layer_models,
            aggregator_specs=self.aggregator_specs,
            aggregator_models=self.aggregator_models,
            references=self.references,
            config_hash=self.config_hash,
            router=_router(config),
        )
        # A strategy may refuse a stack it cannot run (staircase: an aggregator without
        # prefill), with a ConfigError now rather than a failure on the first query.
        if config.budget.limited and not getattr(self.strategy, "budgets", False):
            raise ConfigError(
                f"budgets are not supported by the {config.strategy!r} strategy",
                field="budget",
            )
        check = getattr(self.strategy, "check", None)
        if check is not None:
            check(self.lineup)

    def _all_specs(self) -> list[ResolvedMember]:
        return [*itertools.chain.from_iterable(self.layer_specs), *self.aggregator_specs]

    def _endpoint_limiters(self) -> dict[EndpointId, asyncio.Semaphore]:
        """Calls to one endpoint share one concurrency limiter."""
        limits: dict[EndpointId, int] = {}
        for spec in self._all_specs():
            if spec.max_concurrency is not None:
                key = spec.endpoint
                limits[key] = min(limits.get(key, spec.max_concurrency), spec.max_concurrency)
        return {key: asyncio.Semaphore(n) for key, n in limits.items()}

    def model_for(self, spec: MemberSpec) -> Model:
        """The bare model for ``spec``: an override by model name, else built (one per
        provider, model, endpoint and options)."""
        if spec.model in self._overrides:
            return self._overrides[spec.model]
        key = (*spec.endpoint, spec.model, repr(sorted(spec.options.items())))
        if key not in self._built:
            self._built[key] = build_model(spec, self._pool)
        return self._built[key]

    def _member_model(self, spec: ResolvedMember, wrap: Wrap | None) -> Model:
        model = self.model_for(spec)
        if self._secrets:
            model = self._scrubbed.setdefault(id(model), ScrubbingModel(model, self._secrets))
        limiter = self._limiters.get(spec.endpoint)
        if limiter is not None:
            model = ConcurrencyLimitedModel(model, limiter)
        return wrap(model, spec) if wrap is not None else model

    def models(self) -> list[Model]:
        """Every distinct model this stack calls, as it calls them (wrapped)."""
        unique: dict[int, Model] = {}
        for model in itertools.chain(*self.layer_models, self.aggregator_models):
            unique.setdefault(id(model), model)
        return list(unique.values())

    async def aclose(self) -> None:
        for model in self._built.values():
            await model.aclose()
        self._built.clear()
        await self._pool.aclose()

    async def __aenter__(self) -> Stack:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- public surfaces ---------------------------------------------------------------------

    async def events(
        self,
        request: ChatRequest | MessagesLike,
        *,
        run_id: str | None = None,
        observers: Sequence[Observer] = (),
        streaming: bool = True,
        member_deltas: bool = True,
        member_ttft: bool = False,
        tools: Sequence[ToolSpec] = (),
        budget: BudgetConfig | None = None,
    ) -> AsyncGenerator[Event, None]:
        """Run the stack, yielding every event (``observers`` see each one first), ending
        with ``RunFinished``, or ``RunFailed`` followed by the ``QueryFailed`` (carrying the
        partial result) it describes.

        Closing the generator early (or cancelling its consumer) cancels every in-flight call.
        ``streaming``: the final text is sent as it is written (see ``engine.aggregate`` for
        the stream rule); otherwise it comes as one TextDelta once an attempt completed.
        ``member_deltas=False``: no ``MemberDelta`` per proposer token, for consumers that only
        need each member's finished answer (the server's wire format, a trace recorder): on a
        busy server those per-token events are most of what observing a run costs. A member
        whose text nobody reads as it is written (no deltas wanted, not the streamed answer)
        makes one plain request instead of streaming, where its model has one (``complete``
        of its own): cheaper for the backend and for us, but its ``ttft_s`` is then unknown.
        ``member_ttft=True`` streams every call anyway, so each member's time to first token
        is measured.
        """
        run = self._new_run(request, run_id, streaming, tools, budget)
        run.member_deltas = member_deltas
        run.member_ttft = member_ttft
        watchers = Observers(observers) if observers else None
        task = asyncio.create_task(self._execute(run))
        try:
            while batch := await run.channel.batch():
                for event in batch:
                    if watchers is not None:
                        await watchers.notify(event)
                    yield event
            await task  # re-raises the run's QueryFailed
        finally:
            if not task.done():
                task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    def refusal(self, request: ChatRequest) -> tuple[str, str] | None:
        """Why this stack cannot take ``request`` (message, parameter), or ``None``: checked
        before any call, by the engine (a ``ConfigError``) and the server (a 400)."""
        if not request.tools:
            return None
        if not getattr(self.strategy, "tools", False):
            return (
                f"tools are not supported by the {self.config.strategy!r} strategy (its "
                "answer is not one aggregator's; use the layered strategy)",
                "tools",
            )
        for spec, model in zip(self.aggregator_specs, self.aggregator_models, strict=True):
            if not model.profile.tools:
                return (f"this stack's aggregator {spec.display!r} cannot call tools", "tools")
        return None

    def _new_run(
        self,
        request: ChatRequest | MessagesLike,
        run_id: str | None,
        streaming: bool,
        tools: Sequence[ToolSpec] = (),
        budget: BudgetConfig | None = None,
    ) -> Run:
        if not isinstance(request, ChatRequest):
            request = ChatRequest(messages=as_messages(request), tools=tuple(tools))
        elif tools:
            request = dataclasses.replace(request, tools=tuple(tools))
        refused = self.refusal(request)
        if refused is not None:
            raise ConfigError(refused[0], field=refused[1])
        if budget is not None and budget.limited and not getattr(self.strategy, "budgets", False):
            raise ConfigError(
                f"budgets are not supported by the {self.config.strategy!r} strategy",
                field="budget",
            )
        return Run(
            self.lineup,
            request,
            run_id=run_id or uuid.uuid4().hex,
            streaming=streaming,
            budget=budget,
        )

    async def _execute(self, run: Run) -> None:
        if run.request.tools:
            await check_tool_specs(run.request.tools)
        try:
            run.emit(
                RunStarted(stack=self.config.name, config_hash=self.config_hash, **run.stamp())
            )
            await self.strategy.execute(run)
        except QueryFailed as exc:
            result = exc.result or run.result
            result.error = result.error or str(exc)
            result.latency_s = round(run.now(), 6)
            run.emit(RunFailed(error=str(exc), result=result, **run.stamp()))
            raise
        except BaseException as exc:
            run.result.error = run.result.error or str(exc) or type(exc).__name__
            run.result.latency_s = round(run.now(), 6)
            raise
        else:
            run.result.latency_s = round(run.now(), 6)
            run.emit(RunFinished(result=run.result, **run.stamp()))
        finally:
            run.channel.close()

    async def run(
        self,
        request: ChatRequest | MessagesLike,
        *,
        run_id: str | None = None,
        observers: Sequence[Observer] = (),
        streaming: bool = False,
        member_ttft: bool = False,
        tools: Sequence[ToolSpec] = (),
        budget: BudgetConfig | None = None,
    ) -> Result:
        """The whole result. Non-streaming by default: retries and fallbacks stay free."""
        if not observers and not member_ttft:
            # Nobody can see this run's events: run it directly and drop them unbuilt (the
            # per-call ones) or as they come. The result is the same.
            run = self._new_run(request, run_id, streaming, tools, budget).unwatched()
            await self._execute(run)
            return run.result
        async with aclosing(
            self.events(
                request,
                run_id=run_id,
                observers=observers,
                streaming=streaming,
                member_ttft=member_ttft,
                tools=tools,
                budget=budget,
            )
        ) as events:
            async for event in events:
                if isinstance(event, RunFinished):
                    return event.result
        raise AssertionError("a run always ends with RunFinished or an exception")

    # -- the Model interface: a failing stack raises the ModelCallError its caller expects ----

    async def stream(self, request: ChatRequest) -> AsyncIterator[Chunk]:
        try:
            async with aclosing(self.events(request)) as events:
                async for event in events:
                    if isinstance(event, TextDelta):
                        yield Chunk(text=event.text)
                    elif isinstance(event, ToolCalls):
                        yield Chunk(tool_calls=event.calls)
                    elif isinstance(event, RunFinished):
                        agg = event.result.aggregator
                        yield Chunk(
                            finish_reason=(agg.finish_reason if agg else None) or "stop",
                            usage=event.result.usage,
                        )
        except QueryFailed as exc:
            raise _as_call_error(exc) from exc

    async def complete(self, request: ChatRequest) -> Completion:
        try:
            result = await self.run(request)
        except QueryFailed as exc:
            raise _as_call_error(exc) from exc
        agg = result.aggregator
        return Completion(
            text=result.final,
            finish_reason=(agg.finish_reason if agg else None) or "stop",
            usage=result.usage,
            tool_calls=tuple(result.tool_calls),
        )


def _router(config: StackConfig) -> MemberRouter | None:
    if config.router is None:
        return None
    factory = registry().routers.get(config.router.name, field="router.name")
    router: MemberRouter = factory(config.router.options)
    return router


def _as_call_error(exc: QueryFailed) -> StackFailed:
    return StackFailed(exc, usage=exc.result.usage if exc.result is not None else None)
