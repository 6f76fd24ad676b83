"""Deterministic answers and OpenAI wire-format bodies for the fake backend.

Everything here is pure and cheap: it runs once per request on the benchmark hot path.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

# Fixed vocabulary so that the text of the first k words never depends on the total length:
# a max_tokens-capped answer is then exactly a prefix of the uncapped one.
_FILLER = (
    "alpha",
    "bravo",
    "charlie",
    "delta",
    "echo",
    "foxtrot",
    "golf",
    "hotel",
    "india",
    "juliett",
    "kilo",
    "lima",
    "mike",
    "november",
    "oscar",
    "papa",
    "quebec",
    "romeo",
    "sierra",
    "tango",
    "uniform",
    "victor",
    "whiskey",
    "xray",
    "yankee",
    "zulu",
)

DONE = b"data: [DONE]\n\n"
GARBAGE_SSE_LINE = b'data: {"id": "chatcmpl-broken", "choices": [{"delta": {"content": \n\n'
GARBAGE_JSON_BODY = b'{"id": "chatcmpl-broken", "object": "chat.completion", "choices": [{"mess'

_ERROR_INFO: dict[int, tuple[str, str]] = {
    500: ("server_error", "internal_error"),
    503: ("server_error", "service_unavailable"),
    429: ("rate_limit_error", "rate_limit_exceeded"),
    401: ("invalid_request_error", "invalid_api_key"),
}


def dumps(obj: Any) -> bytes:
    """Compact UTF-8 JSON, as OpenAI writes it."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def messages_digest(messages: Sequence[Mapping[str, Any]]) -> str:
    """Short sha256 of the canonical JSON of `messages` (sorted keys, compact, UTF-8)."""
    # list(...) so tuples and lists of the same messages digest alike.
    canonical = json.dumps(
        list(messages), sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def content_words(model: str, messages: Sequence[Mapping[str, Any]], tokens: int) -> list[str]:
    words = [model, "saw", messages_digest(messages)][:tokens]
    i = 0
    while len(words) < tokens:
        words.append(_FILLER[i % len(_FILLER)])
        i += 1
    return words


def expected_content(model: str, messages: Sequence[Mapping[str, Any]], tokens: int) -> str:
    """The exact text the fake backend answers `messages` with: ``"{model} saw {digest} ..."``
    cut or padded with filler words to `tokens` words."""
    return " ".join(content_words(model, messages, tokens))


def count_prompt_tokens(messages: list[Any]) -> int:
    """Whitespace-separated words across message contents (text parts of list contents too)."""
    total = 0
    for msg in messages:
        if not isinstance(msg, dict):
            continue
        content = msg.get("content")
        if isinstance(content, str):
            total += len(content.split())
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, dict) and isinstance(part.get("text"), str):
                    total += len(part["text"].split())
    return total


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def completion_body(
    *,
    rid: str,
    created: int,
    model: str,
    content: str,
    finish_reason: str,
    usage_: dict[str, int],
    message: dict[str, Any] | None = None,
) -> bytes:
    """A whole chat completion; ``message`` replaces the plain text message (tool calls)."""
    return dumps(
        {
            "id": rid,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": message or {"role": "assistant", "content": content},
                    "finish_reason": finish_reason,
                    "logprobs": None,
                }
            ],
            "usage": usage_,
        }
    )


def error_body(status: int, model: str, *, message: str | None = None) -> bytes:
    err_type, code = _ERROR_INFO.get(status, ("server_error", "error"))
    return dumps(
        {
            "error": {
                "message": message or f"fake backend: injected HTTP {status} for model {model!r}",
                "type": err_type,
                "param": None,
                "code": code,
            }
        }
    )


def bad_request_body(message: str) -> bytes:
    return dumps(
        {
            "error": {
                "message": message,
                "type": "invalid_request_error",
                "param": None,
                "code": None,
            }
        }
    )


class ChunkWriter:
    """Builds the SSE events of one streamed completion.

    The per-token chunks differ only in their content, so they are spliced from a prefix and
    suffix rendered once per request instead of JSON-encoding a dict per token.
    """

    __slots__ = ("_head", "_model", "_rid", "_tail", "_usage_null", "created")

    def __init__(self, rid: str, created: int, model: str, include_usage: bool) -> None:
        self._rid = rid
        self._model = model
        self.created = created
        # OpenAI sends "usage": null on every chunk once include_usage is on.
        self._usage_null = include_usage
        self._head = (
            b'data: {"id":'
            + dumps(rid)
            + b',"object":"chat.completion.chunk","created":'
            + str(created).encode()
            + b',"model":'
            + dumps(model)
            + b',"choices":[{"index":0,"delta":{"content":'
        )
        self._tail = (
            b'},"finish_reason":null}]' + (b',"usage":null' if include_usage else b"") + b"}\n\n"
        )

    def _event(self, choices: list[dict[str, Any]], usage_: dict[str, int] | None) -> bytes:
        obj: dict[str, Any] = {
            "id": self._rid,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self._model,
            "choices": choices,
        }
        if self._usage_null or usage_ is not None:
            obj["usage"] = usage_
        return b"data: " + dumps(obj) + b"\n\n"

    def first(self, text: str) -> bytes:
        return self._event(
            [
                {
                    "index": 0,
                    "delta": {"role": "assistant", "content": text},
                    "finish_reason": None,
                }
            ],
            None,
        )

    def delta(self, delta: dict[str, Any]) -> bytes:
        """A chunk with any ``delta`` (tool-call deltas), finish_reason null."""
        return self._event([{"index": 0, "delta": delta, "finish_reason": None}], None)

    def token(self, text: str) -> bytes:
        return self._head + dumps(text) + self._tail

    def finish(self, finish_reason: str) -> bytes:
        return self._event([{"index": 0, "delta": {}, "finish_reason": finish_reason}], None)

    def usage(self, usage_: dict[str, int]) -> bytes:
        return self._event([], usage_)
