"""Shared by the batch tests: a stack on the fault backend and batch input files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from moakit import parse_config
from moakit.config import StackConfig

PRICE = {"price_in_per_mtok": 1.0, "price_out_per_mtok": 2.0}


def fake_stack(base_url: str, name: str = "fake", **extra: Any) -> StackConfig:
    data: dict[str, Any] = {
        "name": name,
        "defaults": {"provider": "openai", "base_url": base_url, "max_tokens": 16, "retries": 0},
        "layers": [[{"model": "p1", **PRICE}, {"model": "p2", **PRICE}]],
        "aggregator": {"model": "agg", **PRICE},
    }
    data.update(extra)
    return parse_config(data)


def write_input(path: Path, n: int, *, model: str = "fake", start: int = 0) -> Path:
    with path.open("w") as fh:
        for i in range(start, start + n):
            body = {"model": model, "messages": [{"role": "user", "content": f"question {i}"}]}
            line = {"custom_id": f"q{i}", "method": "POST", "url": "/v1/chat/completions"}
            fh.write(json.dumps({**line, "body": body}) + "\n")
    return path


def read_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def normalized(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Output lines without what differs between two runs of the same input (ids, times)."""
    out = []
    for row in rows:
        row = json.loads(json.dumps(row))
        row.pop("id")
        if row["response"] is not None:
            row["response"].pop("request_id")
            body = row["response"]["body"]
            body.pop("id", None)
            body.pop("created", None)
        out.append(row)
    return out
