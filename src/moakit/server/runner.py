"""The one query runner behind every route (chat streamed and not, Responses streamed and not).

``prepare`` turns a validated request into a ``Query`` (which stack, which request) or a 400
before any model is called; ``answer`` runs it and yields what the client may see: the final
text as it is written, layer progress, and the ``Result``. The stream rule lives here: once a
piece of answer text has been yielded, that text is part of the answer, so a failure of the
attempt that wrote it ends the query with an error, never with another attempt's text.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any, TypeVar

from starlette.requests import Request
from starlette.types import Receive

from moakit.engine import Stack
from moakit.engine.tool_calls import check_tool_specs
from moakit.errors import ConfigError, QueryFailed
from moakit.events import Event, LayerFinished, RunFinished, TextDelta, ToolCalls
from moakit.models.base import ChatRequest, Model
from moakit.policies import BudgetConfig
from moakit.result import Result
from moakit.schema import OutputInvalid, SchemaRefused, check_answer, check_schema
from moakit.server.errors import ApiError, bad_request, query_error
from moakit.server.request_stack import RequestStack, translate
from moakit.server.state import ServerState, build_stack
from moakit.trace import TraceRecorder, traced_events

T = TypeVar("T")


def request_stacks_disabled() -> ApiError:
    return bad_request(
        "request-supplied stacks are disabled on this server (the operator enables them with "
        "`moa serve --allow-request-stacks`)",
        "moa",
        "request_stacks_disabled",
    )


class ClientGone(Exception):
    """The client disconnected before its answer was ready."""


@dataclass
class Query:
    model: str  # the name the client asked for, echoed in responses
    request: ChatRequest
    stack: Stack
    owned: bool  # built for this request (a request stack): closed when it ends
    run_id: str | None = None  # the request id, so logs, traces and results share one id
    recorder: TraceRecorder | None = None
    budget: BudgetConfig | None = None  # the request's own limits (``moa_budget``)

    async def aclose(self) -> None:
        if self.owned:
            await self.stack.aclose()


# Where the client put the format's schema (named in a 400): chat and Responses differ.
CHAT_SCHEMA_PARAM = "response_format.json_schema.schema"
# Where a tool's field is, from the engine's Chat-shaped path (``tools.N.function.x``).
ToolParam = Callable[[str], str]


def same_path(field: str) -> str:
    return field


async def prepare(
    state: ServerState,
    model: str,
    request: ChatRequest,
    custom: RequestStack | None,
    *,
    run_id: str,
    schema_param: str = CHAT_SCHEMA_PARAM,
    tool_param: ToolParam = same_path,
    budget: BudgetConfig | None = None,
) -> Query:
    await check_response_format(request.response_format, schema_param)
    await check_tools(request, tool_param)
    if custom is None:
        query = Query(
            model, request, state.stack(model), owned=False, run_id=run_id, recorder=state.recorder
        )
    else:
        caps = state.settings.request_stacks
        if not caps.enabled:
            raise request_stacks_disabled()
        config = translate(custom, state.settings)
        if request.max_tokens is not None and request.max_tokens > caps.max_tokens:
            raise bad_request(
                f"max_tokens exceeds this server's cap for request stacks ({caps.max_tokens})",
                "max_tokens",
                "limit_exceeded",
            )
        query = Query(
            model,
            request,
            build_stack(config, reveal_key_names=False),
            owned=True,
            run_id=run_id,
            recorder=state.recorder,
        )
    query.budget = budget
    try:
        check_capabilities(query.stack, request)
        if budget is not None and not getattr(query.stack.strategy, "budgets", False):
            raise bad_request(
                f"moa_budget is not supported by the {query.stack.config.strategy!r} strategy",
                "moa_budget",
                "unsupported_parameter",
            )
    except ApiError:
        await query.aclose()
        raise
    return query


async def check_response_format(response_format: Mapping[str, Any] | None, param: str) -> None:
    """A 400 before any call for a schema the server cannot apply safely (see ``schema``)."""
    if not response_format or response_format.get("type") != "json_schema":
        return
    schema = (response_format.get("json_schema") or {}).get("schema")
    if schema is None:
        return
    try:
        await check_schema(schema)
    except SchemaRefused as exc:
        raise bad_request(f"{param}: {exc}", param) from None


async def check_tools(request: ChatRequest, tool_param: ToolParam) -> None:
    """A 400 before any call for tools the engine could not check calls against (a bad or
    repeated name, a schema ``schema.check_schema`` refuses), naming the field."""
    try:
        await check_tool_specs(request.tools)
    except ConfigError as err:
        param = tool_param(err.field) if err.field else "tools"
        raise bad_request(f"{param}: {err}", param) from None


def _aggregator_models(stack: Stack) -> list[tuple[str, Model]]:
    # The final aggregator and its fallbacks: whichever answers gets the client's parameters.
    return [
        (spec.display, model)
        for spec, model in zip(stack.aggregator_specs, stack.aggregator_models, strict=True)
    ]


def check_capabilities(stack: Stack, request: ChatRequest) -> None:
    """A 400 before any call when the aggregator cannot honour what the client asked."""
    refused = stack.refusal(request)
    if refused is not None:
        message, param = refused
        raise bad_request(message, param, "unsupported_parameter")
    for label, model in _aggregator_models(stack):
        if request.response_format is not None and not model.profile.response_format:
            raise bad_request(
                f"response_format is not supported by this stack: its aggregator {label!r} "
                "cannot be constrained to a format",
                "response_format",
                "unsupported_parameter",
            )
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(request, name) is not None and not model.profile.penalties:
                raise bad_request(
                    f"{name} is not supported by this stack's aggregator {label!r}",
                    name,
                    "unsupported_parameter",
                )


async def answer(
    query: Query, *, streaming: bool
) -> AsyncIterator[TextDelta | ToolCalls | LayerFinished | Result]:
    """Run the query. Raises ``QueryFailed`` (or ``ApiError``) when there is no answer.
    ``ToolCalls`` come after the answer's text, already checked against the tools' schemas
    (never a call of a discarded attempt).

    The stream rule is the engine's (``streaming=True``): once answer text was emitted, a
    failure of the attempt that wrote it raises ``AggregatorFailed`` instead of retrying, so
    a client never sees text that is not the answer."""
    # The wire shows no proposer text, so no per-token MemberDelta events are built.
    events: AsyncGenerator[Event, None] = (
        traced_events(
            query.stack,
            query.request,
            query.recorder,
            run_id=query.run_id,
            streaming=streaming,
            member_deltas=False,
            budget=query.budget,
        )
        if query.recorder is not None
        else query.stack.events(
            query.request,
            run_id=query.run_id,
            streaming=streaming,
            member_deltas=False,
            budget=query.budget,
        )
    )
    async with aclosing(events):
        async for event in events:
            if isinstance(event, TextDelta):
                if event.text and streaming:
                    yield event
            elif isinstance(event, LayerFinished | ToolCalls):
                yield event
            elif isinstance(event, RunFinished):
                if not event.result.tool_calls:
                    # An answer that calls tools is not the final answer the format is for.
                    await check_output(event.result.final, query.request.response_format)
                yield event.result


async def check_output(text: str, response_format: Mapping[str, Any] | None) -> None:
    """The aggregator was asked for a format; a text that does not match it is not an answer."""
    if not response_format or response_format.get("type") not in ("json_object", "json_schema"):
        return
    try:
        await check_answer(text, response_format)
    except OutputInvalid as exc:
        raise _invalid_output(str(exc)) from None
    except SchemaRefused as exc:
        raise bad_request(f"the response format's schema: {exc}", None) from None


def _invalid_output(message: str) -> ApiError:
    return ApiError(502, message, type="upstream_error", code="invalid_output")


async def result_of(query: Query) -> Result:
    async for item in answer(query, streaming=False):
        if isinstance(item, Result):
            return item
    raise AssertionError("a run ends with its result or an exception")


async def unless_disconnected(work: Awaitable[T], receive: Receive) -> T:
    """Await ``work`` while watching the connection: a client that leaves cancels it (its
    upstream calls and its concurrency slot go with it) and ``ClientGone`` is raised."""

    async def gone() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(gone())
    try:
        await asyncio.wait((task, watcher), return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
        await asyncio.gather(watcher, task, return_exceptions=True)
    if task.cancelled():
        raise ClientGone
    return task.result()


async def admit(state: ServerState, query: Query) -> int:
    """A concurrency slot for the query, or a 429 (after releasing what the query holds)."""
    try:
        return state.limiter.acquire()
    except ApiError:
        await query.aclose()
        raise


async def run_to_result(state: ServerState, request: Request, query: Query, slot: int) -> Result:
    """The non-streaming path: the answer, or the query cancelled when the client leaves."""
    completed = False
    try:
        result = await unless_disconnected(result_of(query), request.receive)
        completed = True
        return result
    except QueryFailed as err:
        raise query_error(err) from None
    finally:
        state.limiter.release(slot, completed=completed)
        await query.aclose()
