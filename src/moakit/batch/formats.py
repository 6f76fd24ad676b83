"""Batch files: OpenAI's Batch input and output line formats, plus plain prompt JSONL.

Input, one JSON object per line, either OpenAI's Batch request line::

    {"custom_id": "q1", "method": "POST", "url": "/v1/chat/completions",
     "body": {"model": "local", "messages": [{"role": "user", "content": "Hi"}]}}

(``body.model`` names the stack) or a plain line with ``prompt`` or ``messages`` (``custom_id``
optional: ``line-N`` by default; ``model`` optional: the default stack; other Chat Completions
parameters allowed, e.g. ``temperature``)::

    {"prompt": "Why is the sky blue?"}

Bodies are validated by the server's own Chat Completions schema, so a parameter is honoured or
refused exactly as ``moa serve`` would. A bad line is never dropped: it becomes an error line.

Output, one line per ``custom_id``, OpenAI's Batch output line::

    {"id": "batch_req_...", "custom_id": "q1",
     "response": {"status_code": 200, "request_id": "...", "body": {chat.completion}},
     "error": null}

A request that ran and failed has its status code and an OpenAI error body in ``response``; an
item that could not be run at all (its worker lost too often) has ``response: null`` and
``error: {"code", "message"}`` (OpenAI's ``BatchError`` fields). The completion body's
``system_fingerprint`` names the stack configuration (``moakit-<hash>``): a resumed run refuses
to mix answers of a changed stack into one file.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from moakit.errors import ConfigError
from moakit.server.errors import ApiError, bad_request, from_validation
from moakit.server.wire import ChatCompletionRequest

CHAT_URL = "/v1/chat/completions"
_BATCH_KEYS = {"custom_id", "method", "url", "body"}


@dataclass
class InputLine:
    """One input line: a validated request, or the error line it will become."""

    custom_id: str
    number: int  # 1-based line number in the input file
    model: str | None = None
    request: ChatCompletionRequest | None = None
    error: ApiError | None = None
    raw_body: dict[str, Any] = field(default_factory=dict)


def fingerprint(config_hash: str) -> str:
    return f"moakit-{config_hash[:32]}"


def _parse(number: int, raw: bytes, default_model: str) -> InputLine:
    fallback_id = f"line-{number}"
    try:
        data = json.loads(raw.decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        return InputLine(fallback_id, number, error=bad_request(f"not JSON: {exc}", None))
    if not isinstance(data, dict):
        return InputLine(fallback_id, number, error=bad_request("a line must be an object", None))
    custom_id = data.get("custom_id", fallback_id)
    if not isinstance(custom_id, str) or not custom_id:
        return InputLine(
            fallback_id, number, error=bad_request("custom_id must be a string", "custom_id")
        )
    line = InputLine(custom_id, number)
    if "body" in data or "url" in data or "method" in data:
        unknown = sorted(set(data) - _BATCH_KEYS)
        if unknown:
            line.error = bad_request(f"unknown field {unknown[0]!r} in a batch line", unknown[0])
            return line
        if data.get("method", "POST") != "POST":
            line.error = bad_request("method must be POST", "method")
            return line
        if data.get("url") != CHAT_URL:
            line.error = bad_request(
                f"url must be {CHAT_URL} (the only endpoint moa batch runs)", "url"
            )
            return line
        body = data.get("body")
        if not isinstance(body, dict):
            line.error = bad_request("body must be an object", "body")
            return line
        body = dict(body)
        body.setdefault("model", default_model)
    else:
        body = {k: v for k, v in data.items() if k != "custom_id"}
        if "prompt" in body:
            prompt = body.pop("prompt")
            if "messages" in body:
                line.error = bad_request("give prompt or messages, not both", "prompt")
                return line
            if not isinstance(prompt, str):
                line.error = bad_request("prompt must be a string", "prompt")
                return line
            body["messages"] = [{"role": "user", "content": prompt}]
        elif "messages" not in body:
            line.error = bad_request("a plain line needs prompt or messages", "prompt")
            return line
        body.setdefault("model", default_model)
    line.raw_body = body
    if isinstance(body.get("model"), str):
        line.model = body["model"]
    for name, why in (
        ("stream", "a batch answer is written whole; stream is not supported"),
        ("moa", "request stacks are not accepted in batch files; use --config"),
    ):
        if body.get(name):
            line.error = bad_request(why, f"body.{name}", "unsupported_parameter")
            return line
    try:
        line.request = ChatCompletionRequest.model_validate(body)
    except ValidationError as exc:
        err = from_validation(exc)
        err.param = f"body.{err.param}" if err.param else "body"
        line.error = err
    return line


def read_input(path: str | Path, default_model: str) -> list[InputLine]:
    """Every non-blank line of ``path``. Two lines with one ``custom_id`` refuse the file (the
    output could not say which answer is whose)."""
    lines: list[InputLine] = []
    seen: dict[str, int] = {}
    with Path(path).open("rb") as fh:
        for number, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            line = _parse(number, raw, default_model)
            if line.custom_id in seen:
                raise ConfigError(
                    f"{path}: custom_id {line.custom_id!r} appears on lines "
                    f"{seen[line.custom_id]} and {number}; every custom_id must be unique",
                    field="custom_id",
                )
            seen[line.custom_id] = number
            lines.append(line)
    return lines


def response_line(
    custom_id: str, status_code: int, body: dict[str, Any], request_id: str
) -> dict[str, Any]:
    return {
        "id": f"batch_req_{uuid.uuid4().hex}",
        "custom_id": custom_id,
        "response": {"status_code": status_code, "request_id": request_id, "body": body},
        "error": None,
    }


def error_line(custom_id: str, code: str, message: str) -> dict[str, Any]:
    return {
        "id": f"batch_req_{uuid.uuid4().hex}",
        "custom_id": custom_id,
        "response": None,
        "error": {"code": code, "message": message},
    }


def is_success(line: dict[str, Any]) -> bool:
    response = line.get("response")
    return isinstance(response, dict) and response.get("status_code") == 200


@dataclass
class Existing:
    """What an earlier run left in the output file."""

    lines: dict[str, dict[str, Any]]  # the last line per custom_id
    valid_bytes: int  # the file's length up to its last complete line


def read_output(path: Path) -> Existing:
    """The output file's lines by custom_id (later lines win: a retried error replaces itself).
    A last line cut short by a crash is ignored (and cut off before appending)."""
    lines: dict[str, dict[str, Any]] = {}
    if not path.exists():
        return Existing(lines, 0)
    data = path.read_bytes()
    valid = data.rfind(b"\n") + 1
    for number, raw in enumerate(data[:valid].splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ConfigError(
                f"{path}: line {number} is not JSON ({exc}); not a moa batch output file?",
                field="output",
            ) from None
        if not isinstance(row, dict) or not isinstance(row.get("custom_id"), str):
            raise ConfigError(
                f"{path}: line {number} has no custom_id; not a moa batch output file?",
                field="output",
            )
        lines[row["custom_id"]] = row
    return Existing(lines, valid)


def line_fingerprint(line: dict[str, Any]) -> str | None:
    body = (line.get("response") or {}).get("body") or {}
    value = body.get("system_fingerprint") if isinstance(body, dict) else None
    return value if isinstance(value, str) else None


def iter_json_lines(rows: list[dict[str, Any]]) -> Iterator[str]:
    for row in rows:
        yield json.dumps(row, ensure_ascii=False, separators=(",", ":")) + "\n"
