"""Starlette app speaking the OpenAI chat-completions wire format over MoA stacks.

Errors always have the OpenAI shape ``{"error": {"message", "type", "param", "code"}}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import os
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from moakit.config import StackConfig, load_preset, parse_config, preset_names
from moakit.engine import Stack
from moakit.errors import (
    AggregatorFailed,
    ConfigError,
    DeadlineExceeded,
    LayerFailed,
    MissingKeyError,
    QueryFailed,
)
from moakit.events import (
    AggregatorFailed as AggregatorFailedEvent,
)
from moakit.events import (
    Event,
    LayerFinished,
    RunFinished,
    TextDelta,
)
from moakit.models.base import ChatRequest, Message
from moakit.result import Result

log = logging.getLogger("moakit.server")

_ROLES = frozenset({"system", "developer", "user", "assistant"})


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def _query_error(err: QueryFailed) -> ApiError:
    if isinstance(err, DeadlineExceeded):
        return ApiError(504, str(err), type="upstream_error", code="deadline_exceeded")
    if isinstance(err, LayerFailed):
        return ApiError(502, str(err), type="upstream_error", code="layer_failed")
    if isinstance(err, AggregatorFailed):
        return ApiError(502, str(err), type="upstream_error", code="aggregator_failed")
    return ApiError(502, str(err), type="upstream_error", code="query_failed")


@dataclass
class _Parsed:
    model: str
    request: ChatRequest
    stream: bool = False
    include_usage: bool = False
    details: bool = False
    custom: StackConfig | None = None


def _bad(message: str, param: str | None, code: str = "invalid_value") -> ApiError:
    return ApiError(400, message, param=param, code=code)


def _content(value: Any, where: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        parts: list[str] = []
        for i, part in enumerate(value):
            if not isinstance(part, dict) or part.get("type") != "text":
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise _bad(
                    f"only text content is supported; {where}[{i}] has type {kind!r}",
                    f"{where}[{i}]",
                    "unsupported_content",
                )
            text = part.get("text")
            if not isinstance(text, str):
                raise _bad(f"{where}[{i}].text must be a string", f"{where}[{i}].text")
            parts.append(text)
        return "".join(parts)
    raise _bad(f"{where} must be a string", where, "unsupported_content")


def _parse_body(body: Any) -> _Parsed:
    if not isinstance(body, dict):
        raise _bad("request body must be a JSON object", None, "invalid_json")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _bad(
            "'model' is required and must be a string", "model", "missing_required_parameter"
        )
    raw = body.get("messages")
    if not isinstance(raw, list) or not raw:
        raise _bad("'messages' must be a non-empty array", "messages")
    messages: list[Message] = []
    for i, m in enumerate(raw):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise _bad(f"{where} must be an object", where)
        role = m.get("role")
        if role not in _ROLES:
            raise _bad(f"{where}.role must be one of {sorted(_ROLES)}", f"{where}.role")
        if m.get("tool_calls") or role == "tool":
            raise _bad("tool calls are not supported", f"{where}", "unsupported_parameter")
        messages.append({"role": role, "content": _content(m.get("content"), f"{where}.content")})

    n = body.get("n")
    if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n != 1):
        raise _bad(
            "only n=1 is supported: a MoA stack writes one answer", "n", "unsupported_parameter"
        )
    for key in ("tools", "functions", "tool_choice", "function_call"):
        if body.get(key):
            raise _bad(f"'{key}' is not supported by MoA stacks", key, "unsupported_parameter")

    temperature = body.get("temperature")
    if temperature is not None:
        if not isinstance(temperature, int | float) or isinstance(temperature, bool):
            raise _bad("'temperature' must be a number", "temperature")
        if not 0 <= temperature <= 2:
            raise _bad("'temperature' must be between 0 and 2", "temperature")
    max_tokens: int | None = None
    for key in ("max_completion_tokens", "max_tokens"):
        value = body.get(key)
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise _bad(f"'{key}' must be a positive integer", key)
        max_tokens = value if max_tokens is None else max_tokens
    seed = body.get("seed")
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
        raise _bad("'seed' must be an integer", "seed")
    stop_raw = body.get("stop")
    stop: list[str] | None
    if stop_raw is None:
        stop = None
    elif isinstance(stop_raw, str):
        stop = [stop_raw]
    elif isinstance(stop_raw, list) and all(isinstance(s, str) for s in stop_raw):
        stop = list(stop_raw) or None
    else:
        raise _bad("'stop' must be a string or an array of strings", "stop")
    stream = body.get("stream", False)
    if not isinstance(stream, bool) and stream is not None:
        raise _bad("'stream' must be a boolean", "stream")
    opts = body.get("stream_options")
    if opts is not None and not isinstance(opts, dict):
        raise _bad("'stream_options' must be an object", "stream_options")
    details = body.get("moa_details", False)
    if not isinstance(details, bool) and details is not None:
        raise _bad("'moa_details' must be a boolean", "moa_details")

    custom: StackConfig | None = None
    moa = body.get("moa")
    if moa is not None:
        if not isinstance(moa, dict):
            raise _bad("'moa' must be an object holding a stack definition", "moa")
        try:
            custom = parse_config(moa, source="moa")
        except ConfigError as err:
            param = f"moa.{err.field}" if err.field else "moa"
            raise _bad(str(err), param, "invalid_stack") from None

    return _Parsed(
        model=model,
        request=ChatRequest(
            messages=messages,
            temperature=float(temperature) if temperature is not None else None,
            max_tokens=max_tokens,
            seed=seed,
            stop=stop,
        ),
        stream=bool(stream),
        include_usage=bool(opts and opts.get("include_usage")),
        details=bool(details),
        custom=custom,
    )


@dataclass
class _State:
    configs: dict[str, StackConfig] | None
    api_keys: list[bytes]
    max_concurrent: int
    max_body_bytes: int
    preload: bool
    stacks: dict[str, Stack] = field(default_factory=dict)
    in_flight: int = 0

    def names(self) -> list[str]:
        return list(self.configs) if self.configs is not None else preset_names()

    def config(self, name: str) -> StackConfig:
        if self.configs is not None:
            if name in self.configs:
                return self.configs[name]
        elif name in preset_names():
            return load_preset(name)
        raise ApiError(
            404,
            f"The model {name!r} does not exist (known: {', '.join(self.names())})",
            param="model",
            code="model_not_found",
        )

    def stack(self, name: str) -> Stack:
        if name not in self.stacks:
            self.stacks[name] = _build(self.config(name))
        return self.stacks[name]


def _build(config: StackConfig) -> Stack:
    try:
        return Stack(config)
    except MissingKeyError as err:
        raise ApiError(
            400,
            f"stack {config.name!r} cannot run: environment variable {err.env_var} is not set",
            param="model",
            code="missing_api_key",
        ) from None
    except ConfigError as err:
        raise ApiError(400, str(err), param=err.field, code="invalid_stack") from None


async def _read_body(request: Request, limit: int) -> Any:
    declared = request.headers.get("content-length")
    too_large = ApiError(413, f"request body exceeds {limit} bytes", code="request_too_large")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_large
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    try:
        return json.loads(b"".join(chunks))
    except (ValueError, UnicodeDecodeError) as exc:
        raise _bad(f"request body is not valid JSON: {exc}", None, "invalid_json") from None


def _finish_reason(result: Result) -> str:
    agg = result.aggregator
    return (agg.finish_reason if agg and agg.finish_reason else None) or "stop"


def _usage(result: Result) -> dict[str, int]:
    u = result.usage
    return {
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.prompt_tokens + u.completion_tokens,
    }


def _access(rid: str, model: str | None, status: int, started: float, tokens: int | None) -> None:
    log.info(
        json.dumps(
            {
                "id": rid,
                "model": model,
                "status": status,
                "latency_ms": round((time.monotonic() - started) * 1000, 1),
                "tokens": tokens,
            }
        )
    )


class _EventStream(StreamingResponse):
    """Streams SSE; whatever ends it (completion, error, client disconnect) closes the run
    and runs ``on_close`` exactly once."""

    def __init__(self, gen: AsyncIterator[str], on_close: Any) -> None:
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


def _sse(obj: Mapping[str, Any]) -> str:
    return f"data: {json.dumps(obj, separators=(',', ':'))}\n\n"


def create_app(
    stacks: Mapping[str, StackConfig] | None = None,
    *,
    api_keys: list[str] | None = None,
    max_concurrent: int = 64,
    max_body_bytes: int = 1_000_000,
    preload: bool = False,
) -> Starlette:
    """The ASGI app. ``stacks`` maps model names to stacks (default: every preset, resolved on
    use); ``api_keys`` defaults to the comma-separated ``MOA_API_KEYS``; ``preload`` loads
    embedded models at startup and holds /ready at 503 until they are in memory."""
    if api_keys is None:
        env = os.environ.get("MOA_API_KEYS", "")
        api_keys = [k.strip() for k in env.split(",") if k.strip()]
    state = _State(
        configs=dict(stacks) if stacks is not None else None,
        api_keys=[k.encode() for k in api_keys],
        max_concurrent=max_concurrent,
        max_body_bytes=max_body_bytes,
        preload=preload,
    )

    def check_auth(request: Request) -> None:
        if not state.api_keys:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        given = token.strip().encode()
        ok = False
        for key in state.api_keys:
            ok |= hmac.compare_digest(given, key)
        if scheme.lower() != "bearer" or not ok:
            raise ApiError(
                401,
                "invalid or missing API key (send 'Authorization: Bearer <key>')",
                type="authentication_error",
                code="invalid_api_key",
            )

    async def chat(request: Request) -> Response:
        rid = f"chatcmpl-{uuid.uuid4().hex}"
        started = time.monotonic()
        model: str | None = None
        try:
            check_auth(request)
            parsed = _parse_body(await _read_body(request, state.max_body_bytes))
            model = parsed.model
            owned: Stack | None = None
            if parsed.custom is not None:
                owned = _build(parsed.custom)
                stack = owned
            else:
                stack = state.stack(parsed.model)
            if state.in_flight >= state.max_concurrent:
                if owned is not None:
                    await owned.aclose()
                raise ApiError(
                    429,
                    f"too many queries in flight (max {state.max_concurrent}); retry shortly",
                    type="rate_limit_error",
                    code="rate_limit_exceeded",
                    headers={"Retry-After": "1"},
                )
            state.in_flight += 1
        except ApiError as err:
            _access(rid, model, err.status, started, None)
            return err.response()

        created = int(time.time())
        if parsed.stream:
            return _stream(rid, created, parsed, stack, owned, started)

        try:
            result: Result | None = None
            async for event in stack.events(parsed.request):
                if isinstance(event, RunFinished):
                    result = event.result
            assert result is not None
        except QueryFailed as qerr:
            failure = _query_error(qerr)
            _access(rid, model, failure.status, started, None)
            return failure.response()
        finally:
            state.in_flight -= 1
            if owned is not None:
                await owned.aclose()
        usage = _usage(result)
        body: dict[str, Any] = {
            "id": rid,
            "object": "chat.completion",
            "created": created,
            "model": parsed.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": result.final},
                    "finish_reason": _finish_reason(result),
                    "logprobs": None,
                }
            ],
            "usage": usage,
        }
        if parsed.details:
            body["moa"] = result.model_dump(mode="json")
        _access(rid, model, 200, started, usage["total_tokens"])
        return JSONResponse(body)

    def _stream(
        rid: str,
        created: int,
        parsed: _Parsed,
        stack: Stack,
        owned: Stack | None,
        started: float,
    ) -> Response:
        outcome: dict[str, Any] = {"status": 200, "tokens": None}
        events = stack.events(parsed.request)
        assert isinstance(events, AsyncGenerator)

        def chunk(delta: dict[str, Any], finish: str | None = None) -> str:
            return _sse(
                {
                    "id": rid,
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": parsed.model,
                    "choices": [
                        {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
                    ],
                }
            )

        async def gen() -> AsyncIterator[str]:
            yield chunk({"role": "assistant", "content": ""})
            try:
                async for event in events:
                    for line in _render(event):
                        yield line
                    if isinstance(event, TextDelta) and event.text:
                        yield chunk({"content": event.text})
                    elif isinstance(event, RunFinished):
                        result = event.result
                        yield chunk({}, _finish_reason(result))
                        usage = _usage(result)
                        outcome["tokens"] = usage["total_tokens"]
                        if parsed.include_usage:
                            yield _sse(
                                {
                                    "id": rid,
                                    "object": "chat.completion.chunk",
                                    "created": created,
                                    "model": parsed.model,
                                    "choices": [],
                                    "usage": usage,
                                }
                            )
                yield "data: [DONE]\n\n"
            except QueryFailed as qerr:
                err = _query_error(qerr)
                outcome["status"] = err.status
                yield _sse(err.body())
            except Exception as exc:  # never leave a stream hanging without a word
                outcome["status"] = 500
                log.exception("stream %s failed", rid)
                yield _sse(
                    ApiError(
                        500, f"internal error: {type(exc).__name__}", type="server_error"
                    ).body()
                )
            finally:
                await events.aclose()

        async def on_close() -> None:
            with contextlib.suppress(Exception):
                await events.aclose()
            state.in_flight -= 1
            if owned is not None:
                await owned.aclose()
            _access(rid, parsed.model, outcome["status"], started, outcome["tokens"])

        return _EventStream(gen(), on_close)

    async def models(request: Request) -> Response:
        try:
            check_auth(request)
        except ApiError as err:
            return err.response()
        data = [
            {"id": name, "object": "model", "created": 0, "owned_by": "moakit"}
            for name in state.names()
        ]
        return JSONResponse({"object": "list", "data": data})

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def ready(request: Request) -> Response:
        """200 when queries can be served now: at least one stack is buildable (its keys are
        set) and, with preloading on, every embedded model those stacks use is in memory.
        Stacks that cannot run are listed with the reason but do not make the server unready:
        they are unavailable by configuration, and requests for them get a clear 400."""
        report: dict[str, dict[str, Any]] = {}
        servable = 0
        loading = False
        for name in state.names():
            try:
                stack = state.stack(name)
            except (ApiError, ConfigError) as err:
                report[name] = {"ready": False, "reason": str(err)}
                continue
            servable += 1
            unloaded = [m.name for m in stack.models() if not m.loaded()]
            if unloaded and state.preload:
                loading = True
                report[name] = {"ready": False, "reason": f"loading {', '.join(unloaded)}"}
            else:
                report[name] = {"ready": True}
        ok = servable > 0 and not loading
        return JSONResponse(
            {"status": "ready" if ok else "not_ready", "models": report},
            status_code=200 if ok else 503,
        )

    async def preload_embedded() -> None:
        # Load embedded weights before the first query, so /ready means "answers without a
        # multi-second first-use stall".
        for name in state.names():
            with contextlib.suppress(ApiError, ConfigError):
                for model in state.stack(name).models():
                    if not model.loaded():
                        try:
                            await model.load()
                        except Exception:
                            log.exception("preloading %s for %s failed", model.name, name)

    async def not_found(request: Request, exc: Exception) -> Response:
        return ApiError(404, f"no route {request.url.path}", code="not_found").response()

    async def bad_method(request: Request, exc: Exception) -> Response:
        return ApiError(405, "method not allowed", code="method_not_allowed").response()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        loader = asyncio.create_task(preload_embedded()) if state.preload else None
        yield
        if loader is not None:
            loader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await loader
        for stack in list(state.stacks.values()):
            with contextlib.suppress(Exception):
                await stack.aclose()
        state.stacks.clear()

    app = Starlette(
        routes=[
            Route("/v1/chat/completions", chat, methods=["POST"]),
            Route("/v1/models", models, methods=["GET"]),
            Route("/health", health, methods=["GET"]),
            Route("/ready", ready, methods=["GET"]),
        ],
        exception_handlers={404: not_found, 405: bad_method},
        lifespan=lifespan,
    )
    app.state.moa = state
    return app


def _render(event: Event) -> list[str]:
    """Progress as SSE comment lines, which OpenAI clients ignore."""
    if isinstance(event, LayerFinished):
        layer = event.layer
        ok = sum(1 for m in layer.members if m.ok)
        return [f": layer {layer.index} done {ok}/{len(layer.members)}\n\n"]
    if isinstance(event, AggregatorFailedEvent):
        note = " (discard streamed text)" if event.discard_text else ""
        return [f": aggregator {event.failed.label} failed{note}\n\n"]
    return []
