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
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from moakit.config import StackConfig
from moakit.engine import Stack
from moakit.errors import ConfigError
from moakit.server import routes_misc
from moakit.server.errors import ApiError
from moakit.server.guard import RequestGuard
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
    allowed_hosts: list[str] | None = None,
    cors_origins: list[str] | None = None,
) -> Starlette:
    """The ASGI app. ``stacks`` maps model names to stacks (default: every preset, resolved on
    use); ``api_keys`` defaults to the comma-separated ``MOA_API_KEYS``; ``preload`` loads
    embedded models at startup and holds /ready at 503 until they are in memory. ``settings``
    declares the endpoints and caps for request-supplied stacks, which stay off unless
    ``allow_request_stacks`` (or the settings) turn them on. ``trace_store``: every query is
    recorded there (plus OpenTelemetry when configured) and the web UI is served at ``/ui``
    (``evals_dir`` adds its eval-report viewer, also without a store); without one, nothing is
    recorded.
    ``allowed_hosts`` (default: the localhost names; IP addresses always pass) and
    ``cors_origins`` (other origins whose pages may call the API) are ``guard.RequestGuard``'s."""
    api_keys = client_keys(api_keys)
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
    # The UI comes with the trace store, or with an eval viewer alone (tracing off).
    with_ui = trace_store is not None or evals_dir is not None
    ui = ui_mount(state, trace_store, evals_dir) if with_ui else []

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

    cors = list(cors_origins or [])
    middleware = [
        Middleware(RequestGuard, allowed_hosts=allowed_hosts, allowed_origins=cors),
    ]
    if cors:
        middleware.append(
            Middleware(
                CORSMiddleware,
                allow_origins=cors,
                allow_methods=["GET", "POST"],
                allow_headers=["authorization", "content-type"],
                expose_headers=["retry-after", "x-should-retry", "x-moakit-run-id"],
            )
        )
    app = Starlette(
        middleware=middleware,
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


def client_keys(given: list[str] | None) -> list[str]:
    """The API keys clients must present: ``given``, else the comma-separated ``MOA_API_KEYS``.
    A value that is set but holds no key (``","``, ``" "``) is refused rather than read as
    "no auth": switching auth off must never happen by accident."""
    source = "api_keys"
    if given is None:
        env = os.environ.get("MOA_API_KEYS")
        if env is None:
            return []
        given, source = env.split(","), "MOA_API_KEYS"
    keys = [k.strip() for k in given]
    if any(not k for k in keys):
        raise ConfigError(
            f"{source} holds an empty key ({len(keys)} comma-separated values, "
            f"{sum(1 for k in keys if not k)} empty): set it to one or more non-empty keys "
            "separated by commas, or unset it to run without auth",
            field=source,
        )
    return keys
