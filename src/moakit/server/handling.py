"""How every request is handled: an id, one JSON access line, errors in OpenAI's shape.

Whatever happens (a 400 before the model is known, a cancelled query, a bug), the client gets
JSON and the log gets exactly one access line; a bug is also logged once with its traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, TypeVar

import anyio
from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from moakit.server.errors import ApiError, bad_request, from_validation, internal_error
from moakit.server.limits import check_auth, read_json
from moakit.server.runner import ClientGone
from moakit.server.state import ServerState

log = logging.getLogger("moakit.server")
M = TypeVar("M", bound=BaseModel)

# nginx's "client closed request": the client left before its answer was ready.
CLIENT_GONE = 499


class Access:
    """One request's access-log record, written once when the request ends."""

    def __init__(self, request_id: str, *, enabled: bool = True) -> None:
        self.id = request_id
        self._enabled = enabled
        self.model: str | None = None
        self.tokens: int | None = None
        self._started = time.monotonic()
        self._written = False

    def finish(self, status: int) -> None:
        if self._written:
            return
        self._written = True
        if not self._enabled:
            return
        line = {
            "id": self.id,
            "model": self.model,
            "status": status,
            "latency_ms": round((time.monotonic() - self._started) * 1000, 1),
            "tokens": self.tokens,
        }
        log.info(json.dumps(line))


Handler = Callable[[Request, Access], Awaitable[Response]]


def route(
    prefix: str, handler: Handler, *, log_access: bool = True
) -> Callable[[Request], Awaitable[Response]]:
    """A Starlette endpoint around ``handler`` with the error and logging rules above.
    ``log_access=False`` for probes (/health, /ready), which would drown the log."""

    async def endpoint(request: Request) -> Response:
        access = Access(f"{prefix}-{uuid.uuid4().hex}", enabled=log_access)
        try:
            response = await handler(request, access)
        except ApiError as err:
            access.finish(err.status)
            return err.response()
        except ClientGone:
            access.finish(CLIENT_GONE)
            return Response(status_code=CLIENT_GONE)  # nobody is there to read it
        except asyncio.CancelledError:
            access.finish(CLIENT_GONE)
            raise
        except Exception:
            log.exception("request %s failed", access.id)
            access.finish(500)
            return internal_error(access.id).response()
        if not isinstance(response, EventStream):
            access.finish(response.status_code)
        return response

    return endpoint


def sse(obj: Mapping[str, Any], event: str | None = None) -> str:
    data = json.dumps(obj, separators=(",", ":"))
    return f"event: {event}\ndata: {data}\n\n" if event else f"data: {data}\n\n"


class EventStream(StreamingResponse):
    """Server-sent events. Whatever ends the stream (its end, an error, the client leaving)
    closes the generator, which cancels the query, and runs ``on_close`` exactly once."""

    def __init__(self, gen: AsyncIterator[str], on_close: Callable[[], Awaitable[None]]) -> None:
        super().__init__(
            gen,
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
        self._gen = gen
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with anyio.CancelScope(shield=True):
                aclose = getattr(self._gen, "aclose", None)
                if aclose is not None:
                    with contextlib.suppress(Exception):
                        await aclose()
                await self._on_close()


async def read_body(state: ServerState, request: Request, access: Access) -> dict[str, Any]:
    """Authenticate and read the JSON object body."""
    check_auth(state.api_keys, request)
    body = await read_json(request, state.max_body_bytes)
    if not isinstance(body, dict):
        raise bad_request("request body must be a JSON object", None, "invalid_json")
    if isinstance(body.get("model"), str):
        access.model = body["model"][:200]  # logged even if the rest is invalid
    return body


def validate(schema: type[M], body: dict[str, Any], unsupported: Mapping[str, str]) -> M:
    """``body`` as ``schema``; ``unsupported`` words the 400 for parameters MoA refuses."""
    try:
        return schema.model_validate(body)
    except ValidationError as exc:
        raise from_validation(exc, unsupported=unsupported) from None
