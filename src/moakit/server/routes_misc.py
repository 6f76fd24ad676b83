"""Models, health, readiness and the answers for routes that do not exist."""

from __future__ import annotations

import contextlib
import logging
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from moakit.errors import ConfigError
from moakit.server.errors import ApiError
from moakit.server.handling import Access
from moakit.server.limits import check_auth, is_authorized
from moakit.server.state import ServerState

log = logging.getLogger("moakit.server")

ROUTES = (
    "POST /v1/chat/completions",
    "POST /v1/responses",
    "GET /v1/models",
    "GET /v1/models/{id}",
    "GET /health",
    "GET /ready",
)


def _model(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 0, "owned_by": "moakit"}


async def list_models(state: ServerState, request: Request, access: Access) -> Response:
    check_auth(state.api_keys, request)
    return JSONResponse({"object": "list", "data": [_model(n) for n in state.names()]})


async def get_model(state: ServerState, request: Request, access: Access) -> Response:
    check_auth(state.api_keys, request)
    name = request.path_params["model_id"]
    access.model = name[:200]
    if not state.known(name):
        raise state.not_found(name)
    return JSONResponse(_model(name))


async def health(state: ServerState, request: Request, access: Access) -> Response:
    return JSONResponse({"status": "ok"})


async def ready(state: ServerState, request: Request, access: Access) -> Response:
    """200 when queries can be served now: at least one stack is buildable (its keys are set)
    and, with preloading on, every embedded model those stacks use is in memory. Stacks that
    cannot run are listed with the reason, to authenticated callers only: stack internals and
    the names of missing key variables are the operator's business."""
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
    body: dict[str, Any] = {"status": "ready" if ok else "not_ready"}
    if is_authorized(state.api_keys, request):
        body["models"] = report
    return JSONResponse(body, status_code=200 if ok else 503)


async def preload_embedded(state: ServerState) -> None:
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
    return ApiError(
        404,
        f"no route {request.method} {request.url.path}; this server answers " + ", ".join(ROUTES),
        code="not_found",
    ).response()


async def bad_method(request: Request, exc: Exception) -> Response:
    return ApiError(
        405,
        f"method {request.method} not allowed on {request.url.path}; routes: " + ", ".join(ROUTES),
        code="method_not_allowed",
    ).response()
