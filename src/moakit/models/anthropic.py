"""Anthropic models through the official ``anthropic`` SDK.

The conversation's translation to the Messages API's turns and blocks (system prompt apart,
``tool_use`` and ``tool_result`` blocks) lives in ``anthropic_wire``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anthropic

from moakit.config import DEFAULT_KEY_ENV, MemberSpec
from moakit.errors import ModelCallError
from moakit.models.anthropic_wire import (
    FINISH,
    split_system,
    tool_calls_of,
    tool_choice_param,
    tools_param,
)
from moakit.models.base import ChatRequest, Chunk, Model, Usage
from moakit.models.profile import ModelProfile
from moakit.models.provider import Provider, ResourcePool, read_key
from moakit.retry import parse_retry_after, parse_should_retry
from moakit.secrets import scrub

# Anthropic requires max_tokens; this is used when neither the member nor the request sets it.
DEFAULT_MAX_TOKENS = 1024


class AnthropicProvider(Provider):
    """One key (and base URL): the SDK client its members share, built with the SDK's own
    retries off (the engine owns the one retry loop)."""

    name = "anthropic"

    def __init__(self, api_key: str, base_url: str | None = None) -> None:
        self.base_url = base_url
        self.key = api_key
        self.client = anthropic.AsyncAnthropic(api_key=api_key, base_url=base_url, max_retries=0)

    @classmethod
    def for_member(cls, spec: MemberSpec) -> AnthropicProvider:
        env = spec.endpoint.api_key_env or DEFAULT_KEY_ENV["anthropic"]
        return cls(read_key(env, who=f"model {spec.model!r}"), spec.base_url)

    async def aclose(self) -> None:
        await self.client.close()


class AnthropicModel(Model):
    # Assistant prefill: a trailing assistant turn is continued, not answered. The Messages API
    # has no presence/frequency penalties; the server refuses them with a 400 up front when
    # this model aggregates, rather than dropping them.
    profile = ModelProfile(prefill=True, penalties=False, tools=True)

    def __init__(self, model: str, provider: AnthropicProvider) -> None:
        self.name = model
        self.provider = provider
        self._client = provider.client
        self._key = provider.key

    async def stream(self, request: ChatRequest) -> AsyncIterator[Chunk]:
        system, turns = split_system(request.messages)
        # The API refuses a final assistant turn ending in whitespace: send it stripped, and
        # drop the whitespace the model then writes first, so the text joins up as it was.
        prefill = (request.prefill or "").rstrip()
        strip_lead = bool(request.prefill) and prefill != request.prefill
        if prefill:
            turns.append({"role": "assistant", "content": prefill})
        params: dict[str, Any] = {
            "model": self.name,
            "messages": turns,
            "max_tokens": request.max_tokens or DEFAULT_MAX_TOKENS,
        }
        if system:
            params["system"] = system
        if request.temperature is not None:
            # Anthropic's range is 0..1; OpenAI-style configs may say up to 2. Sent as a raw
            # body field: the SDK's typed signature no longer lists the sampling parameters
            # (a keyword argument raises TypeError), the Messages API still takes them.
            params["extra_body"] = {"temperature": min(1.0, request.temperature)}
        if request.stop:
            params["stop_sequences"] = list(request.stop)
        if request.top_p is not None:
            params["top_p"] = request.top_p
        if request.tools:
            params["tools"] = tools_param(request.tools)
            choice = tool_choice_param(request.tool_choice, request.parallel_tool_calls)
            if choice is not None:
                params["tool_choice"] = choice
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(request, name) is not None:
                raise ModelCallError(f"{name} is not supported by Anthropic models", kind="other")
        try:
            async with self._client.messages.stream(**params) as stream:
                async for text in stream.text_stream:
                    if strip_lead and text:
                        text = text.lstrip()
                        strip_lead = not text
                    if text:
                        yield Chunk(text=text)
                final = await stream.get_final_message()
        except anthropic.AnthropicError as exc:
            raise translate_error(exc, self._key) from None
        usage = Usage(
            prompt_tokens=final.usage.input_tokens, completion_tokens=final.usage.output_tokens
        )
        # tool_use blocks leave whole, from the final message (their input streams as JSON
        # fragments, which the engine could not check until the last one anyway).
        yield Chunk(
            finish_reason=FINISH.get(final.stop_reason or "", "stop"),
            usage=usage,
            tool_calls=tool_calls_of(final.content),
        )


# Anthropic's error types and the HTTP status each stands for (docs: "HTTP errors").
_ERROR_EVENT_STATUS = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}


def _error_type(body: object) -> str:
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and isinstance(error.get("type"), str):
            return str(error["type"])
    return ""


def translate_error(exc: anthropic.AnthropicError, key: str) -> ModelCallError:
    message = scrub(str(exc), key)
    if isinstance(exc, anthropic.APITimeoutError):
        return ModelCallError(message, kind="timeout")
    if isinstance(exc, anthropic.APIConnectionError):
        return ModelCallError(message, kind="connection")
    if isinstance(exc, anthropic.APIStatusError):
        status = exc.status_code
        if status < 400:
            # An ``error`` event inside a 200 stream: its type says what happened (an
            # ``overloaded_error`` mid-answer is a 529 like any other, worth a retry).
            status = _ERROR_EVENT_STATUS.get(_error_type(exc.body), 500)
        return ModelCallError(
            message,
            kind="http",
            status=status,
            retry_after_s=parse_retry_after(exc.response.headers),
            should_retry=parse_should_retry(exc.response.headers),
        )
    return ModelCallError(message, kind="other")


def build(spec: MemberSpec, pool: ResourcePool) -> Model:
    """The ``anthropic`` provider's factory: the endpoint's shared provider, this member's model."""
    provider = pool.provider(spec.endpoint, lambda: AnthropicProvider.for_member(spec))
    assert isinstance(provider, AnthropicProvider)
    return AnthropicModel(spec.model, provider)
