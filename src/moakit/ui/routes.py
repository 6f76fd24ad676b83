"""The web UI's routes: the page, its static files, and a small JSON/SSE API over the trace store.

Mounted by the server next to the OpenAI routes (``routes=[..., *ui_routes(...)]``). The page
and its assets are public (they hold no data); every ``/ui/api`` route calls ``check_auth``
first, which refuses by raising ``starlette.exceptions.HTTPException`` (401/403).

Errors are OpenAI-shaped JSON (``{"error": {"message", "type", "param", "code"}}``) and every
bad input is a 4xx naming the field.
"""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator, Callable
from importlib import resources
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from moakit.engine import Stack
from moakit.errors import MoaError, QueryFailed
from moakit.jsonlimits import TooDeep, loads_bounded
from moakit.messages import ChatRequest, ToolSpec, as_messages
from moakit.tool_specs import ToolsInvalid, parse_tools
from moakit.trace.adapter import new_run_id, traced_events
from moakit.trace.base import BaseTraceStore
from moakit.trace.recorder import TraceRecorder
from moakit.trace.records import QUERY_STATUSES
from moakit.ui.events_json import event_json, jsonable
from moakit.ui.shape import stack_shape

MAX_BODY_BYTES = 1_000_000
MAX_LIST = 500
# The page runs only its own script and style; model text is inserted with textContent, and this
# is a second wall should a bug ever let markup through.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' blob:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


class _BadRequest(Exception):
    def __init__(self, status: int, message: str, param: str | None, code: str) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


class Refused(Exception):
    """Raised by ``admit`` when the server is at its concurrency limit: a 429 for the client."""

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


# ``admit()`` takes a slot of the server's query limit (or raises ``Refused``) and returns the
# function that gives it back, told whether the query completed.
Admit = Callable[[], Callable[[bool], None]]


class _Slotted(StreamingResponse):
    """An SSE response that gives its slot back exactly once, however the stream ends (its
    end, an error, the client leaving before the first byte)."""

    def __init__(self, gen: AsyncIterator[str], release: Callable[[], None], **kw: Any) -> None:
        super().__init__(gen, **kw)
        self._release = release

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._release()


def api_error(
    status: int,
    message: str,
    param: str | None = None,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    kind = {
        401: "authentication_error",
        403: "permission_error",
        404: "not_found_error",
        429: "rate_limit_error",
    }.get(status, "invalid_request_error")
    return JSONResponse(
        {"error": {"message": message, "type": kind, "param": param, "code": code}},
        status_code=status,
        headers=headers,
    )


def authorized(check_auth: Callable[[Request], None], request: Request) -> Response | None:
    try:
        check_auth(request)
    except HTTPException as exc:
        return api_error(exc.status_code, str(exc.detail), code="invalid_api_key")
    return None


def _static_text(name: str) -> str:
    return resources.files("moakit.ui").joinpath("static", name).read_text(encoding="utf-8")


def _messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    if "messages" in body:
        messages = body["messages"]
        if not isinstance(messages, list) or not messages:
            raise _BadRequest(400, "messages must be a non-empty list", "messages", "invalid_value")
        out = []
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant"):
                raise _BadRequest(
                    400,
                    "each message needs a role: system, user or assistant",
                    f"messages.{i}.role",
                    "invalid_value",
                )
            if not isinstance(m.get("content"), str):
                raise _BadRequest(
                    400,
                    "message content must be a string",
                    f"messages.{i}.content",
                    "invalid_value",
                )
            out.append({"role": m["role"], "content": m["content"]})
        return out
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise _BadRequest(400, "prompt must be a non-empty string", "prompt", "invalid_value")
    return [{"role": "user", "content": prompt}]


def _tools(body: dict[str, Any]) -> tuple[ToolSpec, ...]:
    """Function tools offered to the stack's final aggregator (optional; an API client's,
    the playground offers none): OpenAI's tools array, checked naming the field."""
    if body.get("tools") is None:
        return ()
    try:
        return parse_tools(body["tools"])
    except ToolsInvalid as exc:
        raise _BadRequest(400, exc.message, exc.field, "invalid_value") from None


async def _read_body(request: Request) -> bytes:
    """The body, refused with 413 as soon as it passes MAX_BODY_BYTES (never read whole)."""
    parts: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise _BadRequest(413, "request body too large", None, "body_too_large")
        parts.append(chunk)
    return b"".join(parts)


def _number(request: Request, name: str, default: float | None) -> float | None:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):  # "nan", "inf", "1e400": never a time to compare with
        raise _BadRequest(400, f"{name} must be a finite number", name, "invalid_value")
    return value


def _count(request: Request, name: str, default: int, maximum: int) -> int:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    if not raw.isdigit() or not 1 <= int(raw) <= maximum:
        raise _BadRequest(
            400, f"{name} must be a whole number from 1 to {maximum}", name, "invalid_value"
        )
    return int(raw)


def ui_routes(
    store: BaseTraceStore | None,
    *,
    get_stack: Callable[[str], Stack],
    stack_names: Callable[[], list[str]],
    check_auth: Callable[[Request], None],
    admit: Admit | None = None,
) -> list[BaseRoute]:
    """``/ui`` (page), ``/ui/static/*``, ``/ui/api/traces[/{id}]``, ``/ui/api/stacks`` and
    ``POST /ui/api/run`` (the run's events as SSE, recorded in ``store``). Without a ``store``
    (tracing off) runs are not recorded and the trace routes say so with a 404.

    ``get_stack(name)`` returns a live stack the routes use but do not close (raise ``KeyError``
    or a ``MoaError`` for an unknown or unusable name). ``admit`` puts playground runs under the
    server's query limit, like every other query."""
    recorder = TraceRecorder(store, source="ui") if store is not None else None

    async def page(request: Request) -> Response:
        html = await run_in_threadpool(_static_text, "index.html")
        return Response(
            html,
            media_type="text/html; charset=utf-8",
            headers={"content-security-policy": CSP, "x-content-type-options": "nosniff"},
        )

    async def traces(request: Request) -> Response:
        if (denied := authorized(check_auth, request)) is not None:
            return denied
        if store is None:
            return _tracing_off()
        try:
            status = request.query_params.get("status") or None
            if status is not None and status not in QUERY_STATUSES:
                raise _BadRequest(
                    400,
                    f"status must be one of {', '.join(QUERY_STATUSES)}",
                    "status",
                    "invalid_value",
                )
            rows = await run_in_threadpool(
                store.list_queries,
                stack=request.query_params.get("stack") or None,
                status=status,
                since=_number(request, "since", None),
                limit=_count(request, "limit", 50, MAX_LIST),
            )
        except _BadRequest as exc:
            return api_error(exc.status, exc.message, exc.param, exc.code)
        items = []
        for q in rows:
            question = ""
            for m in reversed(q.input or []):
                if m.get("role") == "user":
                    question = str(m.get("content", ""))[:200]
                    break
            items.append(
                {
                    "id": q.id,
                    "stack_name": q.stack_name,
                    "status": q.status,
                    "source": q.source,
                    "start_time": q.start_time,
                    "latency_s": q.latency_s,
                    "total_tokens": q.total_tokens,
                    "cost_usd": q.cost_usd,
                    "question": question,
                    "tool_calls": [c.name for c in q.tool_calls],
                    "advice": q.advice,
                }
            )
        return JSONResponse({"object": "list", "data": items})

    async def trace_detail(request: Request) -> Response:
        if (denied := authorized(check_auth, request)) is not None:
            return denied
        if store is None:
            return _tracing_off()
        query_id = request.path_params["id"]
        full = await run_in_threadpool(store.resolve, query_id)
        record = await run_in_threadpool(store.get, full) if full else None
        if record is None:
            return api_error(404, f"no trace with id {query_id!r}", "id", "not_found")
        return JSONResponse(record.to_json())

    async def stacks(request: Request) -> Response:
        if (denied := authorized(check_auth, request)) is not None:
            return denied
        out = []
        for name in stack_names():
            try:
                out.append(stack_shape(get_stack(name)))
            except (KeyError, MoaError) as exc:
                # A preset whose key is missing is listed with the reason, not hidden.
                out.append({"name": name, "error": str(exc)})
        return JSONResponse({"object": "list", "data": out})

    async def run(request: Request) -> Response:
        if (denied := authorized(check_auth, request)) is not None:
            return denied
        try:
            raw = await _read_body(request)
            try:
                body = loads_bounded(raw)
            except TooDeep as exc:
                # The same 400 as /v1: the parser's recursion is bounded, never a 500.
                raise _BadRequest(400, f"body is {exc}", None, "invalid_json") from None
            except ValueError:
                raise _BadRequest(400, "body must be JSON", None, "invalid_json") from None
            if not isinstance(body, dict):
                raise _BadRequest(400, "body must be a JSON object", None, "invalid_json")
            name = body.get("stack")
            if not isinstance(name, str) or not name:
                raise _BadRequest(400, "stack must be a stack name", "stack", "invalid_value")
            messages = _messages(body)
            tools = _tools(body)
            try:
                stack = get_stack(name)
            except KeyError:
                raise _BadRequest(404, f"unknown stack {name!r}", "stack", "not_found") from None
            except MoaError as exc:
                raise _BadRequest(400, str(exc), "stack", "stack_unavailable") from None
        except _BadRequest as exc:
            return api_error(exc.status, exc.message, exc.param, exc.code)
        give_back: Callable[[bool], None] = _no_slot
        if admit is not None:
            try:
                give_back = admit()
            except Refused as exc:
                headers = {"Retry-After": str(exc.retry_after_s)}
                return api_error(429, str(exc), None, "rate_limit_exceeded", headers)
        run_id = new_run_id()
        outcome = {"completed": False}
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                give_back(outcome["completed"])

        async def stream() -> AsyncIterator[str]:
            yield _sse({"type": "run", "run_id": run_id, "stack": name})
            try:
                request = ChatRequest(messages=as_messages(messages), tools=tools)
                events = (
                    traced_events(stack, request, recorder, run_id=run_id)
                    if recorder is not None
                    else stack.events(request, run_id=run_id)
                )
                async for event in events:
                    yield _sse(event_json(event))
                outcome["completed"] = True
            except QueryFailed as exc:
                # The partial result (who answered, who failed) rides along for the cards.
                yield _sse(
                    {"type": "error", "message": str(exc), "result": jsonable(exc.result)}
                    if exc.result is not None
                    else {"type": "error", "message": str(exc)}
                )
            except MoaError as exc:
                yield _sse({"type": "error", "message": str(exc)})

        return _Slotted(
            stream(),
            release,
            media_type="text/event-stream",
            headers={"cache-control": "no-store", "x-moakit-run-id": run_id},
        )

    return [
        Route("/ui", page, methods=["GET"]),
        Route("/ui/", page, methods=["GET"]),
        Mount("/ui/static", app=StaticFiles(packages=[("moakit.ui", "static")]), name="ui-static"),
        Route("/ui/api/traces", traces, methods=["GET"]),
        Route("/ui/api/traces/{id}", trace_detail, methods=["GET"]),
        Route("/ui/api/stacks", stacks, methods=["GET"]),
        Route("/ui/api/run", run, methods=["POST"]),
    ]


def _tracing_off() -> Response:
    return api_error(
        404, "tracing is off on this server: no traces are recorded", None, "tracing_off"
    )


def _no_slot(completed: bool) -> None:
    """Without ``admit`` there is no slot to give back."""


def _sse(obj: dict[str, Any]) -> str:
    return f"data: {json.dumps(obj, separators=(',', ':'), ensure_ascii=False)}\n\n"
