"""The OpenAI-compatible adapter against hand-written wire responses: the SSE and error shapes
real servers send that the fake backend does not (comments, CRLF, multi-line data, error events,
plain-text error bodies)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from email.utils import formatdate

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from moakit import Stack
from moakit.config import MemberSpec, parse_config
from moakit.errors import ModelCallError, QueryFailed
from moakit.models.base import ChatRequest, Model, collect
from moakit.models.openai_compat import build
from moakit.models.provider import ResourcePool

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
REQUEST = ChatRequest(messages=[{"role": "user", "content": "hi"}], max_tokens=5)
SECRET = "sk-test-abcdef0123456789"


@asynccontextmanager
async def _model(handler: Handler, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Model]:
    app = web.Application()
    app.router.add_post("/v1/chat/completions", handler)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    monkeypatch.setenv("WIRE_KEY", SECRET)
    pool = ResourcePool()
    spec = MemberSpec(
        model="m", base_url=str(server.make_url("/v1")), api_key_env="WIRE_KEY", retries=0
    )
    try:
        yield build(spec, pool)
    finally:
        await pool.aclose()
        await server.close()


def sse(body: bytes) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(body)
        await resp.write_eof()
        return resp

    return handler


async def streamed(handler: Handler, monkeypatch: pytest.MonkeyPatch) -> tuple[str, str | None]:
    async with _model(handler, monkeypatch) as model:
        completion = await collect(model.stream(REQUEST))
    return completion.text, completion.finish_reason


async def test_sse_comments_crlf_and_multiline_data(monkeypatch: pytest.MonkeyPatch) -> None:
    body = (
        b": keep-alive comment\r\n\r\n"
        b'event: message\r\nid: 1\r\ndata: {"choices":[{"delta":{"content":"Hel"}}]}\r\n\r\n'
        b'data: {"choices":[{"delta":\ndata: {"content":"lo"}}]}\n\n'
        b'data: {"choices":[{"delta":{},"finish_reason":"length"}],'
        b'"usage":{"prompt_tokens":3,"completion_tokens":2}}\n\n'
        b"data: [DONE]\n\n"
    )
    assert await streamed(sse(body), monkeypatch) == ("Hello", "length")


async def test_error_event_after_200_fails_the_call(monkeypatch: pytest.MonkeyPatch) -> None:
    body = (
        b'data: {"choices":[{"delta":{"content":"par"}}]}\n\n'
        b'data: {"error":{"message":"backend overloaded","code":503}}\n\n'
    )
    with pytest.raises(ModelCallError) as info:
        await streamed(sse(body), monkeypatch)
    assert info.value.kind == "http" and info.value.status == 503 and info.value.retryable
    assert "backend overloaded" in str(info.value)


async def test_stream_without_finish_reason_is_a_cut(monkeypatch: pytest.MonkeyPatch) -> None:
    body = b'data: {"choices":[{"delta":{"content":"half"}}]}\n\n'
    with pytest.raises(ModelCallError) as info:
        await streamed(sse(body), monkeypatch)
    assert info.value.kind == "connection"


async def test_http_error_message_status_and_retry_after(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: dict[str, str] = {}

    async def handler(request: web.Request) -> web.StreamResponse:
        seen["auth"] = request.headers.get("Authorization", "")
        return web.json_response(
            {"error": {"message": f"rate limited for key {SECRET}", "type": "rate_limit"}},
            status=429,
            headers={"Retry-After": "7"},
        )

    async with _model(handler, monkeypatch) as model:
        with pytest.raises(ModelCallError) as info:
            await model.complete(REQUEST)
    err = info.value
    assert seen["auth"] == f"Bearer {SECRET}"
    assert err.kind == "http" and err.status == 429 and err.retry_after_s == 7.0
    assert "rate limited" in str(err) and SECRET not in str(err)


async def test_plain_text_4xx_is_not_retryable(monkeypatch: pytest.MonkeyPatch) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(status=400, text="model 'm' not found")

    async with _model(handler, monkeypatch) as model:
        with pytest.raises(ModelCallError) as info:
            await model.complete(REQUEST)
    assert info.value.status == 400 and not info.value.retryable
    assert "model 'm' not found" in str(info.value)


async def test_non_streaming_body_and_usage(monkeypatch: pytest.MonkeyPatch) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        assert body["max_tokens"] == 5 and "stream" not in body
        return web.json_response(
            {
                "choices": [{"message": {"content": "ok"}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 4, "completion_tokens": 1},
            }
        )

    async with _model(handler, monkeypatch) as model:
        completion = await model.complete(REQUEST)
    assert completion.text == "ok" and completion.usage.prompt_tokens == 4


async def test_stream_request_answered_with_one_json_body(monkeypatch: pytest.MonkeyPatch) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        assert (await request.json())["stream"] is True
        return web.json_response(
            {"choices": [{"message": {"content": "whole"}, "finish_reason": "stop"}]}
        )

    assert await streamed(handler, monkeypatch) == ("whole", "stop")


def status(code: int, headers: dict[str, str], hits: list[int] | None = None) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        if hits is not None:
            hits.append(code)
        return web.json_response({"error": {"message": "nope"}}, status=code, headers=headers)

    return handler


@pytest.mark.parametrize(
    ("code", "header", "retryable"),
    [(503, "false", False), (400, "true", True), (503, None, True), (400, None, False)],
)
async def test_x_should_retry_overrides_the_status_rule(
    code: int, header: str | None, retryable: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    headers = {"x-should-retry": header} if header is not None else {}
    with pytest.raises(ModelCallError) as info:
        await streamed(status(code, headers), monkeypatch)
    assert info.value.status == code and info.value.retryable is retryable


async def test_retry_after_as_an_http_date(monkeypatch: pytest.MonkeyPatch) -> None:
    when = formatdate(time.time() + 3, usegmt=True)  # "Wed, 09 Dec 2026 10:00:03 GMT"
    with pytest.raises(ModelCallError) as info:
        await streamed(status(429, {"retry-after": when}), monkeypatch)
    assert info.value.retry_after_s is not None and 1.0 < info.value.retry_after_s <= 3.0


async def test_the_engine_does_not_retry_what_the_server_says_not_to(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    hits: list[int] = []
    app = web.Application()
    app.router.add_post("/v1/chat/completions", status(503, {"x-should-retry": "false"}, hits))
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    member = {"model": "m", "base_url": str(server.make_url("/v1")), "retries": 3}
    config = parse_config(
        {
            "retry": {"initial_s": 0.0, "max_s": 0.0},
            "layers": [[member, {**member, "model": "ok-twin"}]],
            "aggregator": member,
        }
    )
    try:
        async with Stack(config) as stack:
            with pytest.raises(QueryFailed):
                await stack.run([{"role": "user", "content": "hi"}])
    finally:
        await server.close()
    assert len(hits) == 2  # each proposer tried once: no retry of a "do not retry"


def test_the_environments_proxy_is_read_once_per_provider(monkeypatch: pytest.MonkeyPatch) -> None:
    from yarl import URL

    from moakit.models.openai_provider import OpenAIProvider

    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:3128")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    assert OpenAIProvider("http://models.internal/v1").proxy == URL("http://127.0.0.1:3128")
    monkeypatch.setenv("NO_PROXY", "models.internal")
    assert OpenAIProvider("http://models.internal/v1").proxy is None
