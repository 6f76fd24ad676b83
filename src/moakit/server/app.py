"""The Starlette app: OpenAI's Chat Completions and Responses wire formats over MoA stacks.

Errors always have the OpenAI shape ``{"error": {"message", "type", "param", "code"}}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from moakit.config import StackConfig
from moakit.engine import Stack
from moakit.server import routes_misc
from moakit.server.errors import ApiError
from moakit.server.handling import Handler, route
from moakit.server.limits import QueryLimiter
from moakit.server.routes_chat import chat
from moakit.server.routes_responses import responses
from moakit.server.settings import ServerSettings
from moakit.server.state import ServerState
from moakit.server.ui_mount import ui_mount
from moakit.trace import BaseTraceStore, default_recorder

log = logging.getLogger("moakit.server")


def create_app(
    stacks: Mapping[str, StackConfig | Stack] | None = None,
    *,
    api_keys: list[str] | None = None,
    max_concurrent: int = 64,
    max_body_bytes: int = 1_000_000,
    preload: bool = False,
    settings: ServerSettings | None = None,
    allow_request_stacks: bool | None = None,
    trace_store: BaseTraceStore | None = None,
    evals_dir: Path | None = None,
) -> Starlette:
    """The ASGI app. ``stacks`` maps model names to stacks (default: every preset, resolved on
    use); ``api_keys`` defaults to the comma-separated ``MOA_API_KEYS``; ``preload`` loads
    embedded models at startup and holds /ready at 503 until they are in memory. ``settings``
    declares the endpoints and caps for request-supplied stacks, which stay off unless
    ``allow_request_stacks`` (or the settings) turn them on. ``trace_store``: every query is
    recorded there (plus OpenTelemetry when configured) and the web UI is served at ``/ui``
    (``evals_dir`` adds its eval-report viewer); without one, nothing is recorded."""
    if api_keys is None:
        env = os.environ.get("MOA_API_KEYS", "")
        api_keys = [k.strip() for k in env.split(",") if k.strip()]
    settings = settings or ServerSettings()
    if allow_request_stacks is not None:
        settings = settings.with_request_stacks(allow_request_stacks)
    state = ServerState(
        configs=dict(stacks) if stacks is not None else None,
        api_keys=[k.encode() for k in api_keys],
        limiter=QueryLimiter(max_concurrent),
        max_body_bytes=max_body_bytes,
        preload=preload,
        settings=settings,
        recorder=default_recorder(source="server", store=trace_store) if trace_store else None,
    )
    ui = ui_mount(state, trace_store, evals_dir) if trace_store is not None else []

    def bind(prefix: str, handler: Any, *, log_access: bool = True) -> Any:
        bound: Handler = functools.partial(handler, state)
        return route(prefix, bound, log_access=log_access)

    async def unexpected(request: Request, exc: Exception) -> Response:
        # Last resort for anything that escapes a route (middleware, routing): still JSON.
        log.error("unhandled error on %s", request.url.path, exc_info=exc)
        return ApiError(500, "internal server error", type="server_error").response()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        loader = asyncio.create_task(routes_misc.preload_embedded(state)) if state.preload else None
        yield
        if loader is not None:
            loader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await loader
        for stack in list(state.stacks.values()):
            with contextlib.suppress(Exception):
                await stack.aclose()
        state.stacks.clear()
        if trace_store is not None:
            trace_store.close()  # its writer commits what is queued first

    app = Starlette(
        routes=[
            Route("/v1/chat/completions", bind("chatcmpl", chat), methods=["POST"]),
            Route("/v1/responses", bind("resp", responses), methods=["POST"]),
            Route("/v1/models", bind("models", routes_misc.list_models), methods=["GET"]),
            Route(
                "/v1/models/{model_id:path}",
                bind("models", routes_misc.get_model),
                methods=["GET"],
            ),
            Route("/health", bind("health", routes_misc.health, log_access=False), methods=["GET"]),
            Route("/ready", bind("ready", routes_misc.ready, log_access=False), methods=["GET"]),
            *ui,
        ],
        exception_handlers={
            404: routes_misc.not_found,
            405: routes_misc.bad_method,
            Exception: unexpected,
        },
        lifespan=lifespan,
    )
    app.state.moa = state
    return app
