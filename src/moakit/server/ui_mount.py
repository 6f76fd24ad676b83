"""The web UI (``/ui``) and trace recording, attached to the server's own state and auth.

The UI's routes live in ``moakit.ui``; this adapts the server's conventions to theirs: an unknown
stack is a ``KeyError``, an unusable one a ``ConfigError``, a bad key an ``HTTPException``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse
from starlette.routing import BaseRoute, Route

from moakit.engine import Stack
from moakit.errors import ConfigError
from moakit.server.errors import ApiError
from moakit.server.limits import check_auth
from moakit.server.state import ServerState
from moakit.trace import BaseTraceStore
from moakit.ui.evals import eval_routes
from moakit.ui.routes import Refused, ui_routes


def ui_mount(
    state: ServerState, store: BaseTraceStore | None, evals_dir: Path | None
) -> list[BaseRoute]:
    def auth(request: Request) -> None:
        try:
            check_auth(state.api_keys, request)
        except ApiError as err:
            raise HTTPException(err.status, err.message) from None

    def get_stack(name: str) -> Stack:
        if not state.known(name):
            raise KeyError(name)
        try:
            return state.stack(name)
        except ApiError as err:
            raise ConfigError(err.message, field="stack") from None

    def admit() -> Callable[[bool], None]:
        try:
            slot = state.limiter.acquire()
        except ApiError as err:
            raise Refused(err.message, int(err.headers.get("Retry-After", "1"))) from None
        return lambda completed: state.limiter.release(slot, completed=completed)

    routes = ui_routes(
        store, get_stack=get_stack, stack_names=state.names, check_auth=auth, admit=admit
    )
    if evals_dir is not None:
        routes += eval_routes(evals_dir, check_auth=auth)
    # Browsers that open the server's root land on the UI.
    routes.append(Route("/", _to_ui, methods=["GET"]))
    return routes


async def _to_ui(request: Request) -> RedirectResponse:
    return RedirectResponse("/ui")
