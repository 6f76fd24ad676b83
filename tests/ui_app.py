"""A small app mounting the UI routes, as the server will (shared by the UI tests)."""

from __future__ import annotations

import contextlib
import hmac
import socket
import threading
import time
from collections.abc import Iterator, Mapping

import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request

from moakit import Stack
from moakit.trace import TraceStore
from moakit.ui.routes import ui_routes


def make_app(store: TraceStore, stacks: Mapping[str, Stack], api_key: str | None) -> Starlette:
    def check_auth(request: Request) -> None:
        if api_key is None:
            return
        given = request.headers.get("authorization", "").encode()
        if not hmac.compare_digest(given, f"Bearer {api_key}".encode()):
            raise HTTPException(401, "invalid or missing API key")

    def get_stack(name: str) -> Stack:
        return stacks[name]

    return Starlette(
        routes=ui_routes(
            store, get_stack=get_stack, stack_names=lambda: list(stacks), check_auth=check_auth
        )
    )


class _QuietServer(uvicorn.Server):
    # Several servers share the test process: leave its signal handlers alone.
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class ServerThread:
    """Serves an ASGI app with uvicorn on a loopback port from a background thread."""

    def __init__(self, app: Starlette) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="off", ws="none")
        self.server = _QuietServer(config)
        self._thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self._sock]}, daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> ServerThread:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("UI test server did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self._thread.join(10)
        self._sock.close()
