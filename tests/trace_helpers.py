"""Shared by the trace and UI tests: small stacks over test doubles, and raw database dumps."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from moakit import Stack, parse_config
from moakit.errors import ModelCallError
from moakit.models.base import ChatRequest
from moakit.testing.models import FunctionModel, echo_model


def two_layer_config(**extra: Any) -> Any:
    return parse_config(
        {
            "name": "trace-test",
            "retry": {"initial_s": 0.0, "max_s": 0.0},
            "layers": [[{"model": "a"}, {"model": "b"}], [{"model": "c", "system": "Be brief."}]],
            "aggregator": {"model": "agg"},
            **extra,
        }
    )


def echo_stack(**models: FunctionModel) -> tuple[Stack, dict[str, FunctionModel]]:
    doubles: dict[str, FunctionModel] = {n: echo_model(n) for n in ("a", "b", "c", "agg")}
    doubles.update(models)
    return Stack(two_layer_config(), models=doubles), doubles


def failing(name: str, message: str = "upstream exploded") -> FunctionModel:
    def fn(request: ChatRequest) -> Exception:
        return ModelCallError(message, kind="http", status=400)

    return FunctionModel(fn, name=name)


def fixed(name: str, text: str, delay_s: float = 0.0) -> FunctionModel:
    return FunctionModel(lambda request: text, name=name, delay_s=delay_s)


def dump_all(path: Path) -> list[str]:
    """Every value of every column of every table, as text (what a secret must never be in)."""
    db = sqlite3.connect(path)
    try:
        tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        out: list[str] = []
        for table in tables:
            for row in db.execute(f'SELECT * FROM "{table}"'):
                out.extend("" if v is None else str(v) for v in row)
        return out
    finally:
        db.close()


def raw_bytes(path: Path) -> bytes:
    """The database file and its WAL, as stored on disk."""
    data = b""
    for p in (path, Path(f"{path}-wal")):
        if p.exists():
            data += p.read_bytes()
    return data


def tool_stack(arguments: str, name: str = "tools-ui") -> Stack:
    """One proposer and an aggregator that can call tools: it answers with a ``get_weather``
    call of ``arguments``, or with text once a tool result is in the conversation."""
    from moakit.messages import Completion, ToolCall

    def aggregator(request: ChatRequest) -> Completion:
        if any(m.role == "tool" for m in request.messages):
            return Completion(text="It is sunny.")
        return Completion(text="", tool_calls=(ToolCall("call_1", "get_weather", arguments),))

    config = parse_config(
        {"name": name, "layers": [[{"model": "a"}]], "aggregator": {"model": "agg"}}
    )
    models = {
        "a": FunctionModel(lambda r: "call get_weather", name="a"),
        "agg": FunctionModel(aggregator, name="agg", tools=True),
    }
    return Stack(config, models=models)
