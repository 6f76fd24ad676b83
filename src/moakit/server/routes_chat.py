"""``POST /v1/chat/completions``, streamed and not, over the shared query runner."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from typing import Any, TypeVar

from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from moakit.errors import QueryFailed
from moakit.events import LayerFinished, TextDelta, ToolCalls
from moakit.server.errors import (
    UNSUPPORTED,
    ApiError,
    internal_error,
    query_error,
)
from moakit.server.handling import Access, EventStream, read_body, sse, validate
from moakit.server.runner import (
    Query,
    admit,
    answer,
    prepare,
    request_stacks_disabled,
    run_to_result,
)
from moakit.server.state import ServerState
from moakit.server.wire import (
    ChatCompletionRequest,
    chunk_body,
    completion_body,
    finish_reason,
    tool_call_deltas,
    usage_body,
    usage_chunk_body,
)

log = logging.getLogger("moakit.server")
M = TypeVar("M", bound=BaseModel)


async def chat(state: ServerState, request: Request, access: Access) -> Response:
    raw = await read_body(state, request, access)
    if raw.get("moa") is not None and not state.settings.request_stacks.enabled:
        # Said before validating the stack: the client learns nothing about its schema.
        raise request_stacks_disabled()
    body = validate(ChatCompletionRequest, raw, UNSUPPORTED)
    access.model = body.model
    budget = body.moa_budget.config() if body.moa_budget is not None else None
    query = await prepare(
        state, body.model, body.chat_request(), body.moa, run_id=access.id, budget=budget
    )
    slot = await admit(state, query)
    created = int(time.time())
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return _stream(state, query, slot, access, created, include_usage)
    result = await run_to_result(state, request, query, slot)
    response = completion_body(
        access.id, created, body.model, result, details=bool(body.moa_details)
    )
    access.tokens = response["usage"]["total_tokens"]
    return JSONResponse(response)


def _stream(
    state: ServerState, query: Query, slot: int, access: Access, created: int, include_usage: bool
) -> Response:
    rid, model = access.id, query.model
    outcome: dict[str, Any] = {"status": None}

    def chunk(delta: dict[str, Any], finish: str | None = None) -> str:
        return sse(chunk_body(rid, created, model, delta, finish))

    async def gen() -> AsyncIterator[str]:
        yield chunk({"role": "assistant", "content": ""})
        calls_sent = 0
        try:
            async for item in answer(query, streaming=True):
                if isinstance(item, TextDelta):
                    yield chunk({"content": item.text})
                elif isinstance(item, ToolCalls):
                    for delta in tool_call_deltas(item.calls, first_index=calls_sent):
                        yield chunk(delta)
                    calls_sent += len(item.calls)
                elif isinstance(item, LayerFinished):
                    # Progress as an SSE comment: clients ignore it, curl users see it.
                    layer = item.result
                    yield f": layer {layer.layer} done {layer.answered}/{len(layer.members)}\n\n"
                else:
                    yield chunk({}, finish_reason(item))
                    access.tokens = usage_body(item)["total_tokens"]
                    if include_usage:
                        yield sse(usage_chunk_body(rid, created, model, item))
            outcome["status"] = 200
            yield "data: [DONE]\n\n"
        except QueryFailed as err:
            yield _fail(outcome, query_error(err))
        except ApiError as err:
            yield _fail(outcome, err)
        except Exception:
            log.exception("stream %s failed", rid)
            yield _fail(outcome, internal_error(rid))

    async def on_close() -> None:
        state.limiter.release(slot, completed=outcome["status"] == 200)
        await query.aclose()
        access.finish(outcome["status"] or 499)

    return EventStream(gen(), on_close)


def _fail(outcome: dict[str, Any], err: ApiError) -> str:
    # After a 200 and some text, the error travels as an OpenAI-style error event (the SDKs
    # raise it as an APIError) and the stream ends without [DONE]: the text sent is not an answer.
    outcome["status"] = err.status
    return sse(err.body())
