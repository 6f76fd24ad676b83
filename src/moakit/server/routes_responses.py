"""``POST /v1/responses`` (text and function tools), streamed with the typed events and not,
over the same query runner as chat completions."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from moakit.errors import QueryFailed
from moakit.events import TextDelta, ToolCalls
from moakit.messages import ToolCall
from moakit.result import Result
from moakit.server.errors import ApiError, internal_error, query_error
from moakit.server.handling import Access, EventStream, read_body, sse, validate
from moakit.server.runner import Query, admit, answer, prepare, run_to_result
from moakit.server.state import ServerState
from moakit.server.wire_responses import (
    UNSUPPORTED,
    ResponsesRequest,
    call_item_id,
    final_status,
    function_call_item,
    output_items,
    output_message,
    output_text,
    response_object,
)

log = logging.getLogger("moakit.server")
EventFn = Callable[..., str]
ResponseFn = Callable[..., dict[str, Any]]


async def responses(state: ServerState, request: Request, access: Access) -> Response:
    body = validate(ResponsesRequest, await read_body(state, request, access), UNSUPPORTED)
    access.model = body.model
    query = await prepare(
        state,
        body.model,
        body.chat_request(),
        None,
        run_id=access.id,
        schema_param="text.format.schema",
        tool_param=responses_tool_param,
    )
    slot = await admit(state, query)
    item_id = f"msg_{uuid.uuid4().hex}"
    if body.stream:
        return _stream(state, query, slot, access, body, item_id)
    result = await run_to_result(state, request, query, slot)
    access.tokens = result.usage.total_tokens
    status = final_status(result)
    output = output_items(item_id, result)
    return JSONResponse(
        response_object(access.id, body, status=status, output=output, result=result)
    )


def _stream(
    state: ServerState,
    query: Query,
    slot: int,
    access: Access,
    body: ResponsesRequest,
    item_id: str,
) -> Response:
    created = time.time()
    outcome: dict[str, Any] = {"status": None}
    seq = iter(range(1 << 62))

    def event(kind: str, **payload: Any) -> str:
        return sse({"type": kind, "sequence_number": next(seq), **payload}, event=kind)

    def response(status: str, **kw: Any) -> dict[str, Any]:
        return response_object(access.id, body, status=status, created_at=created, **kw)

    where = {"item_id": item_id, "output_index": 0, "content_index": 0}

    async def gen() -> AsyncIterator[str]:
        yield event("response.created", response=response("in_progress", output=[]))
        yield event("response.in_progress", response=response("in_progress", output=[]))
        parts: list[str] = []
        # The output items sent so far, finished: the message (when it has text), then one
        # per tool call; the text always comes first (the engine sends calls after it).
        done: list[dict[str, Any]] = []
        message_open = False
        try:
            async for item in answer(query, streaming=True):
                if isinstance(item, TextDelta):
                    if not message_open:
                        message_open = True
                        for line in _open_item(event, item_id):
                            yield line
                    parts.append(item.text)
                    yield event("response.output_text.delta", **where, delta=item.text, logprobs=[])
                elif isinstance(item, ToolCalls):
                    if message_open:
                        message_open = False
                        text = "".join(parts)
                        for line in _close_item(event, item_id, text, "completed"):
                            yield line
                        done.append(output_message(item_id, text, "completed"))
                    for call in item.calls:
                        call_id = call_item_id()
                        for line in _call_events(event, len(done), call_id, call):
                            yield line
                        done.append(function_call_item(call_id, call))
                elif isinstance(item, Result):
                    status = final_status(item)
                    if not done and not message_open:
                        message_open = True
                        for line in _open_item(event, item_id):
                            yield line
                    if message_open:
                        for line in _close_item(event, item_id, item.final, status):
                            yield line
                        done.append(output_message(item_id, item.final, status))
                    access.tokens = item.usage.total_tokens
                    yield event(
                        f"response.{status}",
                        response=response(status, output=done, result=item),
                    )
            outcome["status"] = 200
        except QueryFailed as err:
            yield _failed(outcome, event, response, query_error(err))
        except ApiError as err:
            yield _failed(outcome, event, response, err)
        except Exception:
            log.exception("stream %s failed", access.id)
            yield _failed(outcome, event, response, internal_error(access.id))

    async def on_close() -> None:
        state.limiter.release(slot, completed=outcome["status"] == 200)
        await query.aclose()
        access.finish(outcome["status"] or 499)

    return EventStream(gen(), on_close)


def _open_item(event: EventFn, item_id: str) -> list[str]:
    return [
        event(
            "response.output_item.added",
            output_index=0,
            item=output_message(item_id, "", "in_progress"),
        ),
        event(
            "response.content_part.added",
            item_id=item_id,
            output_index=0,
            content_index=0,
            part=output_text(""),
        ),
    ]


def _call_events(event: EventFn, index: int, item_id: str, call: ToolCall) -> list[str]:
    """One function call's events, in OpenAI's order. The call is whole and checked (the
    stream rule), so its arguments go in one delta."""
    where = {"item_id": item_id, "output_index": index}
    return [
        event(
            "response.output_item.added",
            output_index=index,
            item=function_call_item(item_id, call, "in_progress"),
        ),
        event("response.function_call_arguments.delta", **where, delta=call.arguments),
        event(
            "response.function_call_arguments.done",
            **where,
            name=call.name,
            arguments=call.arguments,
        ),
        event(
            "response.output_item.done",
            output_index=index,
            item=function_call_item(item_id, call),
        ),
    ]


def responses_tool_param(field: str) -> str:
    """The engine names a tool's field Chat's way (``tools.N.function.x``); Responses tools
    are flat (``tools.N.x``)."""
    return field.replace(".function.", ".", 1)


def _close_item(event: EventFn, item_id: str, text: str, status: str) -> list[str]:
    where = {"item_id": item_id, "output_index": 0, "content_index": 0}
    return [
        event("response.output_text.done", **where, text=text, logprobs=[]),
        event("response.content_part.done", **where, part=output_text(text)),
        event(
            "response.output_item.done",
            output_index=0,
            item=output_message(item_id, text, status),
        ),
    ]


def _failed(outcome: dict[str, Any], event: EventFn, response: ResponseFn, err: ApiError) -> str:
    # The text streamed so far is not an answer: the response fails, it does not complete.
    outcome["status"] = err.status
    # ResponseError.code is an enum of OpenAI's own; ours travels in ``type`` and the message.
    code = "rate_limit_exceeded" if err.status == 429 else "server_error"
    error = {"code": code, "message": err.message, "type": err.code, "param": err.param}
    return event("response.failed", response=response("failed", output=[], error=error))
