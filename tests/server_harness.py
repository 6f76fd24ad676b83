"""Shared by the server tests: a real uvicorn server on loopback and the official client."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import openai
import uvicorn
from pydantic import BaseModel
from starlette.applications import Starlette

from moakit import parse_config
from moakit.config import StackConfig
from moakit.engine import Stack
from moakit.models.base import ChatRequest
from moakit.testing.models import FunctionModel

USER = [{"role": "user", "content": "hello"}]


def fake_stack(base_url: str, **extra: Any) -> StackConfig:
    data: dict[str, Any] = {
        "name": "fake",
        "defaults": {"provider": "openai", "base_url": base_url, "max_tokens": 20, "retries": 0},
        "layers": [[{"model": "p1"}, {"model": "p2"}]],
        "aggregator": {"model": "agg"},
    }
    data.update(extra)
    return parse_config(data)


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@contextlib.contextmanager
def serve(app: Starlette) -> Iterator[str]:
    """Run ``app`` on a free loopback port; yields the ``/v1`` base URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = _Server(
        uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=1)
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 5
    while not server.started:
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.should_exit = True
        thread.join(5)
        sock.close()


class City(BaseModel):
    name: str
    population: int


class FormatModel(FunctionModel):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.profile = self.profile.but(response_format=True)


def city_json(request: ChatRequest) -> str:
    # Answers in the requested format when asked, in prose otherwise.
    if request.response_format is None:
        return "Paris is the capital, with about two million people."
    return json.dumps({"name": "Paris", "population": 2_100_000})


def json_stack(agg: FunctionModel, proposer: FunctionModel) -> Stack:
    member = {"model": "p1", "base_url": "http://127.0.0.1:9/v1"}
    cfg = parse_config(
        {"name": "json", "layers": [[member]], "aggregator": {**member, "model": "agg"}}
    )
    return Stack(cfg, models={"p1": proposer, "agg": agg})


def client(base: str, key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=base, api_key=key, max_retries=0, timeout=10)


def wait_until(predicate: Any, timeout: float = 3.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)
