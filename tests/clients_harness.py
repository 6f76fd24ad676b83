"""Shared by tests/test_clients_*.py: ``moa serve`` on a loopback port over a stack of
fake-backend models — two proposers answering text, an aggregator scripted to call tools — so
that real agent frameworks can use the stack as their model.

Nothing here may reach the network: the agent libraries' tracing and telemetry are turned off
while a stack is served (``QUIET_ENV``), and conftest.py refuses any connection but loopback.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from unittest import mock

import moakit.engine.layered
from moakit.engine.advice import AdviceCache
from moakit.server import create_app
from moakit.testing.fake_backend import Behavior, FakeBackend, Fault, ToolCaller
from server_harness import fake_stack, serve

MODEL = "tools"
PROPOSERS = ("p1", "p2")
AGGREGATOR = "agg"

# Environment that keeps the agent libraries quiet: no traces exported, no telemetry.
QUIET_ENV = {
    "OPENAI_AGENTS_DISABLE_TRACING": "1",
    "LANGCHAIN_TRACING_V2": "false",
    "LANGSMITH_TRACING": "false",
    "LANGSMITH_TRACING_V2": "false",
    "LOGFIRE_SEND_TO_LOGFIRE": "false",
    "ANONYMIZED_TELEMETRY": "false",
    "DO_NOT_TRACK": "1",
}


@dataclass
class ToolStack:
    """A served stack: ``base_url`` is what an OpenAI client takes, ``MODEL`` its model name;
    ``backend`` saw every member's request."""

    base_url: str
    backend: FakeBackend
    model: str = MODEL

    def requests_of(self, model: str) -> list[dict[str, Any]]:
        return [body for body in self.backend.stats.received if body["model"] == model]

    def assert_advised(self, times: int = 1) -> None:
        """The proposers advised ``times`` times each (by default once per user turn: their
        advice is reused for the tool iterations), never offered tools, and were shown the
        conversation as text only."""
        for name in PROPOSERS:
            bodies = self.requests_of(name)
            assert len(bodies) == times, f"{name} was asked {len(bodies)} times, not {times}"
            for body in bodies:
                assert "tools" not in body and "tool_choice" not in body
                for message in body["messages"]:
                    assert message["role"] != "tool" and not message.get("tool_calls")

    def assert_aggregator_acted(self, requests: int) -> list[dict[str, Any]]:
        """The aggregator was asked ``requests`` times (one per agent step), each time with
        the caller's tools; returns its requests."""
        bodies = self.requests_of(AGGREGATOR)
        assert len(bodies) == requests, f"the aggregator was asked {len(bodies)} times"
        assert all(body.get("tools") for body in bodies)
        return bodies


@dataclass
class ToolLog:
    """What the test's tool functions were really called with."""

    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def record(self, name: str, **arguments: Any) -> None:
        self.calls.append((name, arguments))


@contextlib.contextmanager
def serve_tool_stack(
    script: ToolCaller, *, fault: Fault | None = None, **stack: Any
) -> Iterator[ToolStack]:
    """``moa serve`` (the real app, uvicorn on a free port) over a fake-backend stack whose
    aggregator answers by ``script`` (with ``fault`` injected); ``stack`` overrides keys of the
    stack config."""
    models = {AGGREGATOR: Behavior(tool_calls=script, fault=fault)}
    quiet = mock.patch.dict(os.environ, QUIET_ENV)
    # Advice is kept per process: each served stack starts with none, so no test reuses
    # another's (the same question to a stack on a recycled port would hash alike).
    no_advice_yet = mock.patch.object(moakit.engine.layered, "ADVICE", AdviceCache())
    with quiet, no_advice_yet, FakeBackend(models, default=Behavior(tokens=8)) as backend:
        config = fake_stack(backend.base_url, name=MODEL, **stack)
        with serve(create_app({MODEL: config}, api_keys=[])) as base:
            yield ToolStack(base, backend)
