"""A fault-injecting, OpenAI-compatible chat-completions server on loopback.

Tests and benchmarks point MoA members at it to get deterministic answers (see
``expected_content``), controllable latency and injected faults, over real HTTP. A model can
be scripted to answer with tool calls (``Behavior(tool_calls=ToolScript(...))``), in OpenAI's
exact shapes, whole or streamed as ``delta.tool_calls``.

Three ways to run it::

    async with FakeBackend({"m": Behavior()}) as fb:      # in the current event loop
        ...fb.base_url...
    with FakeBackend() as fb:                            # own loop in a background thread
        ...
    moa fake-backend --port 0 --config faults.toml       # CLI
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import socket
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Scope

from moakit.testing._fake_chat import ChatEndpoint
from moakit.testing._fake_tools import (
    ScriptedAnswer,
    ScriptedCall,
    ToolCaller,
    ToolScript,
    tool_rounds_done,
)
from moakit.testing._fake_types import (
    BackendStats,
    Behavior,
    Fault,
    FaultKind,
    Latency,
    LatencySampler,
    behavior_from_mapping,
    load_behaviors,
    sample_ttfts,
)
from moakit.testing._fake_wire import expected_content, messages_digest

__all__ = [
    "BackendStats",
    "Behavior",
    "FakeBackend",
    "Fault",
    "FaultKind",
    "Latency",
    "LatencySampler",
    "ScriptedAnswer",
    "ScriptedCall",
    "ToolCaller",
    "ToolScript",
    "behavior_from_mapping",
    "expected_content",
    "load_behaviors",
    "messages_digest",
    "sample_ttfts",
    "tool_rounds_done",
]


@dataclass
class _ModelState:
    behavior: Behavior
    sampler: LatencySampler
    faults_served: int = 0


class _Server(uvicorn.Server):
    """uvicorn.Server that neither grabs process signals nor polls for shutdown.

    Several servers (this one, the moakit server under test) may share a process; uvicorn's
    signal capture restores handlers when it exits and would clobber the others'. Stopping on an
    event instead of uvicorn's 0.1 s tick keeps test teardown fast.
    """

    def __init__(self, config: uvicorn.Config, backend: FakeBackend) -> None:
        super().__init__(config)
        self._backend = backend

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        self._backend._on_started()

    async def main_loop(self) -> None:
        await self.on_tick(0)
        stop = self._backend._stop_event
        assert stop is not None
        await stop.wait()
        # Hanging requests only finish when their client leaves; resetting every connection
        # makes them (and keep-alive sockets) finish now instead of stalling shutdown.
        self._backend._abort_all()


class FakeBackend:
    """OpenAI-compatible fake model server. See the module docstring for the ways to run it."""

    def __init__(
        self,
        models: dict[str, Behavior] | None = None,
        default: Behavior | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.host = host
        self._requested_port = port
        self._models: dict[str, Behavior] = dict(models or {})
        self._default = default or Behavior()
        self._state: dict[str, _ModelState] = {}
        self.stats = BackendStats()
        self._ids = itertools.count(1)
        self._port: int | None = None
        self._server: _Server | None = None
        self._stop_event: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._started = threading.Event()
        self._thread: threading.Thread | None = None
        self._thread_error: BaseException | None = None
        self.app = Starlette(
            routes=[
                Route("/v1/chat/completions", ChatEndpoint(self), methods=["POST"]),
                Route("/v1/models", self._list_models, methods=["GET"]),
                Route("/health", self._health, methods=["GET"]),
            ]
        )

    # --- configuration ------------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("FakeBackend is not started")
        return self._port

    @property
    def base_url(self) -> str:
        """``http://HOST:PORT/v1``, what OpenAI clients take as base_url."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/v1"

    def set_behavior(self, model: str, behavior: Behavior) -> None:
        """Replace `model`'s behaviour; its latency RNG and fault `times` budget start afresh."""
        self._models[model] = behavior
        self._state.pop(model, None)

    def set_default(self, behavior: Behavior) -> None:
        """Replace the behaviour of models without their own; their RNGs and budgets restart."""
        self._default = behavior
        for name in [n for n in self._state if n not in self._models]:
            self._state.pop(name, None)

    def behavior(self, model: str) -> Behavior:
        return self._models.get(model, self._default)

    def reset_stats(self) -> None:
        self.stats._reset()

    def _model_state(self, model: str) -> _ModelState:
        state = self._state.get(model)
        if state is None:
            behavior = self.behavior(model)
            state = _ModelState(behavior, LatencySampler(behavior.latency, model))
            self._state[model] = state
        return state

    # --- lifecycle ----------------------------------------------------------------------------

    def _bind(self) -> socket.socket:
        if self._port is not None:
            raise RuntimeError("FakeBackend already started")
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        # proto must be IPPROTO_TCP, not the default 0: asyncio only sets TCP_NODELAY on accepted
        # sockets whose proto says TCP, and without it Nagle + delayed ACK add ~40 ms to every
        # response written in two parts (headers, then body).
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, self._requested_port))
        except OSError:
            sock.close()
            raise
        self._port = sock.getsockname()[1]
        return sock

    def _make_server(self) -> _Server:
        # log_config=None: do not dictConfig the host process's logging. access_log=False keeps
        # per-request log records off the hot path (uvicorn applies it to the shared
        # "uvicorn.access" logger, so it is process-wide).
        config = uvicorn.Config(
            self.app,
            log_config=None,
            access_log=False,
            lifespan="off",
            ws="none",
            timeout_graceful_shutdown=2,
            server_header=False,
            date_header=False,
        )
        return _Server(config, self)

    def _on_started(self) -> None:
        self._started.set()

    async def _serve(self, sock: socket.socket) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop_event = asyncio.Event()
        self._server = self._make_server()
        try:
            await self._server.serve(sockets=[sock])
        finally:
            sock.close()

    async def start(self) -> FakeBackend:
        """Start serving in the running event loop; returns once the port accepts connections."""
        sock = self._bind()
        self._task = asyncio.create_task(self._serve(sock))
        while not self._started.is_set():
            if self._task.done():
                self._task.result()
                raise RuntimeError("FakeBackend exited during startup")
            await asyncio.sleep(0.005)
        return self

    async def aclose(self) -> None:
        if self._task is None:
            return
        if self._stop_event is not None:
            self._stop_event.set()
        task, self._task = self._task, None
        await task

    async def __aenter__(self) -> FakeBackend:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def start_in_thread(self, timeout: float = 10.0) -> FakeBackend:
        """Serve from a daemon thread with its own event loop (for sync code and benchmarks)."""
        sock = self._bind()

        def run() -> None:
            try:
                asyncio.run(self._serve(sock))
            except BaseException as exc:
                self._thread_error = exc
                self._started.set()

        self._thread = threading.Thread(target=run, name=f"fake-backend:{self._port}", daemon=True)
        self._thread.start()
        if not self._started.wait(timeout):
            raise TimeoutError(f"FakeBackend did not start within {timeout}s")
        if self._thread_error is not None:
            raise RuntimeError("FakeBackend failed to start") from self._thread_error
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop a backend started with start_in_thread (idempotent)."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        loop, stop_event = self._loop, self._stop_event
        if loop is not None and stop_event is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # loop already gone: thread is ending anyway
                loop.call_soon_threadsafe(stop_event.set)
        thread.join(timeout)
        if thread.is_alive():
            raise TimeoutError(f"FakeBackend did not stop within {timeout}s")

    def __enter__(self) -> FakeBackend:
        return self.start_in_thread()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # The signature is the documented API; asyncio.timeout would not help since this polls.
    async def wait_idle(self, timeout: float = 5.0) -> None:  # noqa: ASYNC109
        """Wait until no request is in flight; TimeoutError after `timeout` seconds.

        Polls rather than awaiting an event so it works from any loop or thread.
        """
        deadline = time.monotonic() + timeout
        while self.stats.in_flight:
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{self.stats.in_flight} request(s) still in flight")
            await asyncio.sleep(0.005)

    def wait_idle_blocking(self, timeout: float = 5.0) -> None:
        """wait_idle for sync callers (the backend runs in its own thread)."""
        deadline = time.monotonic() + timeout
        while self.stats.in_flight:
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{self.stats.in_flight} request(s) still in flight")
            time.sleep(0.005)

    # --- connection control -------------------------------------------------------------------

    def _connections(self) -> list[Any]:
        return [] if self._server is None else list(self._server.server_state.connections)

    @staticmethod
    def _reset_transport(transport: Any) -> None:
        # SO_LINGER(on, 0) turns close into an RST: the client sees "connection reset", the way a
        # crashed upstream or a dropping proxy looks, rather than an orderly FIN.
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()

    def _abort_connection(self, scope: Scope) -> bool:
        # uvicorn does not hand the transport to the app; its protocol objects carry the same
        # client address as the scope, so match on that.
        client = scope.get("client")
        for conn in self._connections():
            transport = getattr(conn, "transport", None)
            if transport is not None and getattr(conn, "client", None) == client:
                self._reset_transport(transport)
                return True
        return False

    def _abort_all(self) -> None:
        for conn in self._connections():
            transport = getattr(conn, "transport", None)
            if transport is not None and not transport.is_closing():
                self._reset_transport(transport)

    # --- endpoints ----------------------------------------------------------------------------

    async def _list_models(self, request: Request) -> Response:
        data = [
            {"id": name, "object": "model", "created": 0, "owned_by": "fake-backend"}
            for name in self._models
        ]
        return JSONResponse({"object": "list", "data": data})

    async def _health(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})
