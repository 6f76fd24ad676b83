"""OpenAI-compatible endpoints (OpenAI, vLLM, Ollama, llama.cpp server, Together, OpenRouter...).

The chat-completions wire format is small and stable, so this adapter speaks it directly over an
aiohttp connection pool instead of going through the ``openai`` SDK. Measured on the 3 x 6 + 1
benchmark (bench/overhead.py) the SDK spent ~0.9 ms of CPU per call building and validating
request and response objects (and httpcore's pool rescans every connection per request), which at
a few thousand calls in flight was the engine's entire overhead; this path spends a fraction.

Timeouts and retries are not handled here: the engine owns the one per-call timeout and the one
retry policy. Errors leave as ``ModelCallError`` with the API key scrubbed.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp

from moakit.config import MemberSpec
from moakit.errors import ModelCallError
from moakit.messages import (
    ToolCall,
    call_from_openai,
    to_openai,
    tool_choice_to_openai,
    with_prefill,
)
from moakit.models.base import ChatRequest, Chunk, Completion, Model, Usage
from moakit.models.openai_provider import OpenAIProvider
from moakit.models.profile import ModelProfile
from moakit.models.provider import ResourcePool
from moakit.retry import parse_retry_after, parse_should_retry
from moakit.secrets import scrub

# Connection-level failures (refused, reset, closed mid-body): worth a retry, like the SDK's
# APIConnectionError.
_CONNECTION_ERRORS = (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, ConnectionError)
_SSE = {"Accept": "text/event-stream"}


class OpenAIChatModel(Model):
    """The Chat Completions wire format, spoken to an ``OpenAIProvider``."""

    # Sent as OpenAI's response_format; whether the endpoint honours it is checked on the
    # answer (the server validates the final text against the format).
    # Function tools are part of the wire; an endpoint whose model cannot call them says so
    # with a 400, or the operator turns them off per member (``options.tools = false``).
    base_profile = ModelProfile(response_format=True, tools=True)

    def __init__(
        self, model: str, provider: OpenAIProvider, options: Mapping[str, Any] | None = None
    ) -> None:
        options = options or {}
        self.name = model
        self.provider = provider
        self._stream_usage = bool(options.get("stream_usage", True))
        # Assistant prefill is not part of OpenAI's API; vLLM (and servers copying it) continue
        # a trailing assistant message with ``continue_final_message``. Opt-in per member
        # (``options.continue_final_message = true``), since an endpoint without it would
        # answer the partial message instead of continuing it.
        prefill = bool(options.get("continue_final_message", False))
        tools = bool(options.get("tools", True))
        self.profile = self.base_profile.but(prefill=prefill, tools=tools)

    def _body(self, request: ChatRequest, *, stream: bool) -> bytes:
        body: dict[str, Any] = {"model": self.name, "messages": to_openai(request.messages)}
        if request.prefill:
            if not self.profile.prefill:
                raise ModelCallError(
                    f"model {self.name!r} cannot continue a partial answer (set "
                    "options.continue_final_message = true on a vLLM-style endpoint)",
                    kind="other",
                )
            body["messages"] = to_openai(with_prefill(request.messages, request.prefill))
            body["continue_final_message"] = True
            body["add_generation_prompt"] = False
        if request.temperature is not None:
            body["temperature"] = request.temperature
        if request.max_tokens is not None:
            body["max_tokens"] = request.max_tokens
        if request.seed is not None:
            body["seed"] = request.seed
        if request.stop:
            body["stop"] = list(request.stop)
        for name in ("top_p", "presence_penalty", "frequency_penalty"):
            value = getattr(request, name)
            if value is not None:
                body[name] = value
        if request.response_format is not None:
            body["response_format"] = dict(request.response_format)
        if request.tools:
            body["tools"] = [tool.to_openai() for tool in request.tools]
            if request.parallel_tool_calls is not None:
                body["parallel_tool_calls"] = request.parallel_tool_calls
        if request.tool_choice is not None and request.tools:
            body["tool_choice"] = tool_choice_to_openai(request.tool_choice)
        if stream:
            body["stream"] = True
            if self._stream_usage:
                body["stream_options"] = {"include_usage": True}
        return json.dumps(body, ensure_ascii=False).encode()

    async def complete(self, request: ChatRequest) -> Completion:
        ep = self.provider
        try:
            async with ep.post(self._body(request, stream=False)) as response:
                await _raise_for_status(response, ep.key)
                raw = await response.read()
        except _CONNECTION_ERRORS as exc:
            raise _connection_error(exc, ep.key) from None
        return _completion(_json(raw, "response body", ep.key), ep.key)

    async def stream(self, request: ChatRequest) -> AsyncIterator[Chunk]:
        ep = self.provider
        finish: str | None = None
        usage: Usage | None = None
        calls = _ToolCallAssembler()
        try:
            async with ep.post(self._body(request, stream=True), _SSE) as response:
                await _raise_for_status(response, ep.key)
                if response.content_type == "application/json":
                    # Some servers and proxies ignore "stream": true and answer in one body.
                    completion = _completion(
                        _json(await response.read(), "response body", ep.key), ep.key
                    )
                    if completion.text:
                        yield Chunk(text=completion.text)
                    yield Chunk(
                        finish_reason=completion.finish_reason or "stop",
                        usage=completion.usage,
                        tool_calls=completion.tool_calls,
                    )
                    return
                async for data in _sse_data(response):
                    if data == "[DONE]":
                        break
                    event = _json(data.encode(), "stream event", ep.key)
                    _raise_error_field(event, ep.key)
                    usage = _usage(event.get("usage")) or usage
                    for choice in event.get("choices") or ():
                        if choice.get("finish_reason"):
                            finish = choice["finish_reason"]
                        delta = choice.get("delta") or {}
                        content = delta.get("content")
                        if isinstance(content, str) and content:
                            yield Chunk(text=content)
                        if delta.get("tool_calls"):
                            calls.add(delta["tool_calls"])
        except _CONNECTION_ERRORS as exc:
            raise _connection_error(exc, ep.key) from None
        if finish is None:
            # A stream that ends without a finish_reason was cut off, not completed.
            raise ModelCallError("stream ended without a finish_reason", kind="connection")
        # Tool calls leave whole, once the stream is done: a call's arguments arrive in
        # fragments and only the last one makes them a JSON object the engine can check.
        yield Chunk(finish_reason=finish, usage=usage, tool_calls=calls.finish())


async def _sse_data(response: aiohttp.ClientResponse) -> AsyncIterator[str]:
    """The ``data`` payload of each server-sent event (multi-line data joined with newlines);
    comments, ``event:`` and ``id:`` lines are skipped."""
    lines: list[str] = []
    async for raw in response.content:
        line = raw.decode("utf-8", "replace").rstrip("\r\n")
        if not line:
            if lines:
                yield "\n".join(lines)
                lines = []
        elif line.startswith("data:"):
            lines.append(line[5:].removeprefix(" "))
    if lines:
        yield "\n".join(lines)


async def _raise_for_status(response: aiohttp.ClientResponse, key: str) -> None:
    if response.status < 400:
        return
    raw = await response.read()
    message = raw.decode("utf-8", "replace").strip()
    try:
        error = json.loads(raw).get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            message = error["message"]
        elif isinstance(error, str):
            message = error
    except (ValueError, AttributeError):
        pass
    raise ModelCallError(
        scrub(f"HTTP {response.status}: {message[:500]}", key),
        kind="http",
        status=response.status,
        retry_after_s=parse_retry_after(response.headers),
        should_retry=parse_should_retry(response.headers),
    )


def _raise_error_field(event: Mapping[str, Any], key: str) -> None:
    # vLLM, OpenRouter and others report a failure after the 200 as an event (or a body) with
    # an "error" field.
    error = event.get("error")
    if not error:
        return
    message = error.get("message") if isinstance(error, dict) else str(error)
    code = error.get("code") if isinstance(error, dict) else None
    status = code if isinstance(code, int) and 400 <= code < 600 else 500
    raise ModelCallError(scrub(f"upstream error: {message}", key), kind="http", status=status)


def _json(raw: bytes, what: str, key: str) -> dict[str, Any]:
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise ModelCallError(scrub(f"malformed {what}: {exc}", key), kind="malformed") from None
    if not isinstance(data, dict):
        raise ModelCallError(f"malformed {what}: not a JSON object", kind="malformed")
    return data


def _completion(data: Mapping[str, Any], key: str) -> Completion:
    choice = _first_choice(data, key)
    message = choice.get("message")
    text = message.get("content") if isinstance(message, dict) else None
    raw_calls = message.get("tool_calls") if isinstance(message, dict) else None
    try:
        calls = tuple(call_from_openai(c) for c in raw_calls or ())
    except (ValueError, AttributeError) as exc:
        raise ModelCallError(f"malformed tool call: {exc}", kind="malformed") from None
    return Completion(
        text=text if isinstance(text, str) else "",
        finish_reason=choice.get("finish_reason"),
        usage=_usage(data.get("usage")) or Usage(),
        tool_calls=calls,
    )


class _ToolCallAssembler:
    """OpenAI streams a tool call as deltas keyed by ``index``: the first carries the id and
    the function name, the rest carry pieces of the arguments string, in order."""

    def __init__(self) -> None:
        self._calls: dict[int, dict[str, Any]] = {}

    def add(self, deltas: Any) -> None:
        if not isinstance(deltas, list):
            raise ModelCallError("malformed tool call delta: not a list", kind="malformed")
        for delta in deltas:
            if not isinstance(delta, dict):
                raise ModelCallError("malformed tool call delta", kind="malformed")
            index = delta.get("index", len(self._calls))
            if not isinstance(index, int):
                raise ModelCallError("malformed tool call delta: index", kind="malformed")
            call = self._calls.setdefault(index, {"id": "", "name": "", "arguments": []})
            if isinstance(delta.get("id"), str):
                call["id"] = delta["id"]
            function = delta.get("function") or {}
            if isinstance(function.get("name"), str):
                call["name"] += function["name"]
            if isinstance(function.get("arguments"), str):
                call["arguments"].append(function["arguments"])

    def finish(self) -> tuple[ToolCall, ...]:
        out = []
        for index in sorted(self._calls):
            call = self._calls[index]
            if not call["name"]:
                raise ModelCallError("tool call without a function name", kind="malformed")
            out.append(ToolCall(call["id"], call["name"], "".join(call["arguments"]) or "{}"))
        return tuple(out)


def _first_choice(data: Mapping[str, Any], key: str) -> dict[str, Any]:
    _raise_error_field(data, key)
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise ModelCallError("response has no choices", kind="malformed")
    choice: dict[str, Any] = choices[0]
    return choice


def _usage(raw: Any) -> Usage | None:
    if not isinstance(raw, dict):
        return None
    return Usage(
        prompt_tokens=int(raw.get("prompt_tokens") or 0),
        completion_tokens=int(raw.get("completion_tokens") or 0),
    )


def _connection_error(exc: BaseException, key: str) -> ModelCallError:
    detail = str(exc) or type(exc).__name__
    return ModelCallError(scrub(f"connection error: {detail}", key), kind="connection")


def build(spec: MemberSpec, pool: ResourcePool) -> Model:
    """The ``openai`` provider's factory: the endpoint's shared provider, this member's model."""
    provider = pool.provider(spec.endpoint, lambda: OpenAIProvider.for_member(spec))
    assert isinstance(provider, OpenAIProvider)
    return OpenAIChatModel(spec.model, provider, spec.options)
