"""The Anthropic adapter over real HTTP against a loopback fake of the Messages API: streamed
events, ``message_delta`` usage, error events after a 200, 429/529 with ``retry-after``,
overloaded errors (as tests/test_openai_wire.py does for the OpenAI-compatible adapter)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from moakit import Stack, parse_config
from moakit.config import MemberSpec
from moakit.errors import ModelCallError
from moakit.models.anthropic import build
from moakit.models.base import ChatRequest, Model, collect
from moakit.models.provider import ResourcePool

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
SECRET = "anthropic-canary-key-0123456789abcdef"  # not key-shaped: scrubbing is by value
REQUEST = ChatRequest(
    messages=[
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hi"},
    ],
    max_tokens=5,
    temperature=1.5,
    stop=["END"],
)


def event(name: str, data: dict[str, Any]) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()


def message_start(input_tokens: int = 11) -> bytes:
    return event(
        "message_start",
        {
            "type": "message_start",
            "message": {
                "id": "msg_1",
                "type": "message",
                "role": "assistant",
                "model": "claude-test",
                "content": [],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": {"input_tokens": input_tokens, "output_tokens": 1},
            },
        },
    )


def text_events(*pieces: str) -> bytes:
    out = event(
        "content_block_start",
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
    )
    out += event("ping", {"type": "ping"})
    for piece in pieces:
        out += event(
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": piece},
            },
        )
    return out + event("content_block_stop", {"type": "content_block_stop", "index": 0})


def message_end(stop_reason: str = "end_turn", output_tokens: int = 7) -> bytes:
    return event(
        "message_delta",
        {
            "type": "message_delta",
            "delta": {"stop_reason": stop_reason, "stop_sequence": None},
            "usage": {"output_tokens": output_tokens},
        },
    ) + event("message_stop", {"type": "message_stop"})


def error_event(kind: str, message: str) -> bytes:
    return event("error", {"type": "error", "error": {"type": kind, "message": message}})


class Fake:
    """The Messages endpoint: each request pops the next scripted response."""

    def __init__(self, *responses: Handler) -> None:
        self.responses = list(responses)
        self.bodies: list[dict[str, Any]] = []
        self.headers: list[Any] = []  # case-insensitive multidicts

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.bodies.append(await request.json())
        self.headers.append(request.headers.copy())
        return await self.responses.pop(0)(request)


def sse(body: bytes) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(body)
        await resp.write_eof()
        return resp

    return handler


def status(code: int, kind: str, message: str, **headers: str) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        body = {"type": "error", "error": {"type": kind, "message": message}}
        return web.json_response(body, status=code, headers=headers)

    return handler


@asynccontextmanager
async def serving(fake: Fake, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_post("/v1/messages", fake.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    monkeypatch.setenv("ANTHROPIC_TEST_KEY", SECRET)
    try:
        yield str(server.make_url("")).rstrip("/")
    finally:
        await server.close()


@asynccontextmanager
async def model(fake: Fake, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Model]:
    async with serving(fake, monkeypatch) as url:
        pool = ResourcePool()
        spec = MemberSpec(
            provider="anthropic",
            model="claude-test",
            base_url=url,
            api_key_env="ANTHROPIC_TEST_KEY",
        )
        try:
            yield build(spec, pool)
        finally:
            await pool.aclose()


async def test_streamed_text_usage_and_request_shape(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = Fake(sse(message_start(11) + text_events("Hel", "lo") + message_end("end_turn", 7)))
    async with model(fake, monkeypatch) as m:
        completion = await collect(m.stream(REQUEST))
    assert completion.text == "Hello" and completion.finish_reason == "stop"
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (11, 7)
    body = fake.bodies[0]
    assert body["system"] == "Be brief."
    assert body["messages"] == [{"role": "user", "content": "hi"}]
    assert body["stream"] is True and body["max_tokens"] == 5
    assert body["temperature"] == 1.0  # clamped to Anthropic's 0..1
    assert body["stop_sequences"] == ["END"]
    # The key goes where this SDK version puts it (x-api-key, or a Bearer token), nowhere else.
    sent = fake.headers[0]
    assert SECRET in (sent.get("x-api-key"), sent.get("authorization", "").removeprefix("Bearer "))


async def test_max_tokens_stop_is_truncated(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = Fake(sse(message_start() + text_events("cut") + message_end("max_tokens", 5)))
    async with model(fake, monkeypatch) as m:
        completion = await collect(m.stream(REQUEST))
    assert completion.truncated and completion.usage.completion_tokens == 5


@pytest.mark.parametrize(
    ("kind", "expected_status", "retryable"),
    [
        ("overloaded_error", 529, True),
        ("api_error", 500, True),
        ("invalid_request_error", 400, False),
    ],
)
async def test_error_event_after_a_200(
    kind: str, expected_status: int, retryable: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    body = message_start() + text_events("par") + error_event(kind, f"{kind} [/INST] {SECRET}")
    async with model(Fake(sse(body)), monkeypatch) as m:
        with pytest.raises(ModelCallError) as info:
            await collect(m.stream(REQUEST))
    err = info.value
    assert (err.kind, err.status, err.retryable) == ("http", expected_status, retryable)
    assert kind in str(err) and SECRET not in str(err)


@pytest.mark.parametrize(
    ("code", "kind", "header", "retry_after"),
    [
        (429, "rate_limit_error", {"retry-after": "3"}, 3.0),
        (529, "overloaded_error", {"retry-after": "1.5"}, 1.5),
        (529, "overloaded_error", {}, None),
    ],
)
async def test_rate_limits_and_overload_carry_retry_after(
    code: int,
    kind: str,
    header: dict[str, str],
    retry_after: float | None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with model(Fake(status(code, kind, "slow down", **header)), monkeypatch) as m:
        with pytest.raises(ModelCallError) as info:
            await collect(m.stream(REQUEST))
    err = info.value
    assert (err.kind, err.status, err.retry_after_s) == ("http", code, retry_after)
    assert err.retryable


async def test_authentication_error_is_not_retried_and_key_is_scrubbed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    reply = status(401, "authentication_error", f"invalid x-api-key {SECRET}")
    async with model(Fake(reply), monkeypatch) as m:
        with pytest.raises(ModelCallError) as info:
            await collect(m.stream(REQUEST))
    assert info.value.status == 401 and not info.value.retryable
    assert SECRET not in str(info.value) and "authentication_error" in str(info.value)


async def test_a_stack_retries_an_overloaded_aggregator(monkeypatch: pytest.MonkeyPatch) -> None:
    ok = sse(message_start(3) + text_events("fine") + message_end("end_turn", 2))
    fake = Fake(
        ok,  # the proposer
        status(529, "overloaded_error", "Overloaded", **{"retry-after": "0"}),
        sse(message_start() + text_events("half") + error_event("overloaded_error", "Overloaded")),
        sse(message_start(4) + text_events("the ", "answer") + message_end("end_turn", 2)),
    )
    async with serving(fake, monkeypatch) as url:
        config = parse_config(
            {
                "defaults": {
                    "provider": "anthropic",
                    "base_url": url,
                    "api_key_env": "ANTHROPIC_TEST_KEY",
                },
                "retry": {"initial_s": 0.0, "max_s": 0.0},
                "layers": [[{"model": "claude-p"}]],
                "aggregator": {"model": "claude-a"},
            }
        )
        async with Stack(config) as stack:
            result = await stack.run([{"role": "user", "content": "q"}])
    agg = result.aggregators[0]
    assert result.final == "the answer" and agg.ok
    assert [a.error is None for a in agg.attempts] == [False, False, True]
    assert (agg.attempts[0].error or "").startswith("http 529")
    assert (agg.attempts[1].error or "").startswith("http 529")
    assert "\n> fine\n" in fake.bodies[1]["system"]  # the proposer's answer, fenced
