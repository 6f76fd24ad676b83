"""``POST /v1/responses`` (text subset), streamed with the typed events and not, over the same
query runner as chat completions."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from moakit.errors import QueryFailed
from moakit.events import TextDelta
from moakit.result import Result
from moakit.server.errors import ApiError, internal_error, query_error
from moakit.server.handling import Access, EventStream, read_body, sse, validate
from moakit.server.runner import Query, admit, answer, prepare, run_to_result
from moakit.server.state import ServerState
from moakit.server.wire_responses import (
    UNSUPPORTED,
    ResponsesRequest,
    final_status,
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
    )
    slot = await admit(state, query)
    item_id = f"msg_{uuid.uuid4().hex}"
    if body.stream:
        return _stream(state, query, slot, access, body, item_id)
    result = await run_to_result(state, request, query, slot)
    access.tokens = result.usage.total_tokens
    status = final_status(result)
    output = [output_message(item_id, result.final, status)]
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
        started = False
        try:
            async for item in answer(query, streaming=True):
                if isinstance(item, TextDelta):
                    if not started:
                        started = True
                        for line in _open_item(event, item_id):
                            yield line
                    parts.append(item.text)
                    yield event("response.output_text.delta", **where, delta=item.text, logprobs=[])
                elif isinstance(item, Result):
                    if not started:
                        for line in _open_item(event, item_id):
                            yield line
                    status = final_status(item)
                    for line in _close_item(event, item_id, item.final, status):
                        yield line
                    access.tokens = item.usage.total_tokens
                    done = [output_message(item_id, item.final, status)]
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
