"""A small app mounting the UI routes, as the server will (shared by the UI tests)."""

from __future__ import annotations

import contextlib
import hmac
import socket
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

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


def tiny_png(width: int = 4, height: int = 3) -> bytes:
    """A valid PNG (solid colour), made here so tests need no image library."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    raw = b"".join(b"\x00" + b"\x30\x80\xd0" * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def write_eval_results(directory: Path, hostile: str) -> None:
    """A `moa eval` results directory in the documented layout (docs/eval.md), two systems."""
    import json

    (directory / "records").mkdir(parents=True)
    (directory / "plots").mkdir()
    summary = {
        "dataset": "toy-qa",
        "scorer": "exact",
        "systems": [
            {
                "name": "single",
                "kind": "single",
                "items": 2,
                "scored": 2,
                "errors": 0,
                "score": {"mean": 0.5, "low": 0.0, "high": 1.0, "n": 2},
                "tokens_in": 10,
                "tokens_out": 20,
                "cost_usd": None,
                "latency_s_mean": 0.25,
                "ttft_s_mean": 0.1,
            },
            {
                "name": "moa",
                "kind": "moa",
                "items": 2,
                "scored": 2,
                "errors": 1,
                "score": {"mean": 1.0, "low": 1.0, "high": 1.0, "n": 2},
                "tokens_in": 40,
                "tokens_out": 80,
                "cost_usd": 0.0123,
                "latency_s_mean": 1.5,
                "ttft_s_mean": None,
            },
        ],
    }
    (directory / "summary.json").write_text(json.dumps(summary))
    for system, answers in (("single", ["4", hostile]), ("moa", ["four", "Paris"])):
        lines = [
            json.dumps(
                {
                    "item_id": f"q{i}",
                    "system": system,
                    "final": answer,
                    "score": {"value": float(i == 1 or system == "moa")},
                    "latency_s": 0.5 + i,
                    "error": None,
                }
            )
            for i, answer in enumerate(answers)
        ]
        (directory / "records" / f"{system}.abc123.jsonl").write_text("\n".join(lines) + "\n")
    (directory / "plots" / "layer_curve.png").write_bytes(tiny_png())
