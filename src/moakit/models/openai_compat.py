"""OpenAI-compatible endpoints (OpenAI, vLLM, Ollama, llama.cpp server, Together, OpenRouter...)
through the official ``openai`` SDK. SDK retries are off: the engine owns the one retry policy.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from typing import Any

import openai

from moakit.config import MemberSpec
from moakit.errors import MissingKeyError, ModelCallError
from moakit.models.base import ChatRequest, Chunk, Completion, Model, Usage
from moakit.models.registry import ResourcePool
from moakit.retry import parse_retry_after
from moakit.secrets import scrub


def _api_key(spec: MemberSpec) -> str:
    env = spec.api_key_env
    if env is None and spec.base_url is None:
        env = "OPENAI_API_KEY"
    if env is None:
        # A self-hosted endpoint (vLLM, Ollama, llama.cpp server) usually wants no key; the SDK
        # insists on a non-empty string.
        return "not-needed"
    value = os.environ.get(env)
    if not value:
        raise MissingKeyError(env, who=f"model {spec.model!r}")
    return value


class OpenAICompatModel(Model):
    def __init__(self, spec: MemberSpec, client: openai.AsyncOpenAI, key: str) -> None:
        self.name = spec.model
        self._client = client
        self._key = key
        self._stream_usage = bool(spec.options.get("stream_usage", True))

    def _params(self, request: ChatRequest) -> dict[str, Any]:
        params: dict[str, Any] = {"model": self.name, "messages": list(request.messages)}
        if request.temperature is not None:
            params["temperature"] = request.temperature
        if request.max_tokens is not None:
            params["max_tokens"] = request.max_tokens
        if request.seed is not None:
            params["seed"] = request.seed
        if request.stop:
            params["stop"] = list(request.stop)
        return params

    async def complete(self, request: ChatRequest) -> Completion:
        try:
            response = await self._client.chat.completions.create(**self._params(request))
        except openai.OpenAIError as exc:
            raise translate_error(exc, self._key) from None
        except ValueError as exc:  # the SDK lets a body that is not JSON escape as-is
            raise ModelCallError(f"malformed response: {exc}", kind="malformed") from None
        if not response.choices:
            raise ModelCallError("response has no choices", kind="malformed")
        choice = response.choices[0]
        usage = Usage()
        if response.usage is not None:
            usage = Usage(
                prompt_tokens=response.usage.prompt_tokens or 0,
                completion_tokens=response.usage.completion_tokens or 0,
            )
        return Completion(
            text=choice.message.content or "", finish_reason=choice.finish_reason, usage=usage
        )

    async def stream(self, request: ChatRequest) -> AsyncIterator[Chunk]:
        params = self._params(request)
        if self._stream_usage:
            params["stream_options"] = {"include_usage": True}
        finish: str | None = None
        usage: Usage | None = None
        try:
            response = await self._client.chat.completions.create(stream=True, **params)
            async with response:
                async for event in response:
                    if event.usage is not None:
                        usage = Usage(
                            prompt_tokens=event.usage.prompt_tokens or 0,
                            completion_tokens=event.usage.completion_tokens or 0,
                        )
                    for choice in event.choices:
                        if choice.finish_reason:
                            finish = choice.finish_reason
                        if choice.delta and choice.delta.content:
                            yield Chunk(text=choice.delta.content)
        except openai.OpenAIError as exc:
            raise translate_error(exc, self._key) from None
        except ValueError as exc:  # a garbage SSE data line
            raise ModelCallError(f"malformed stream event: {exc}", kind="malformed") from None
        if finish is None:
            # A stream that ends without a finish_reason was cut off, not completed.
            raise ModelCallError("stream ended without a finish_reason", kind="connection")
        yield Chunk(finish_reason=finish, usage=usage)


def translate_error(exc: openai.OpenAIError, key: str) -> ModelCallError:
    """SDK errors become ``ModelCallError`` here, at the boundary, with the key scrubbed."""
    message = scrub(str(exc), key)
    if isinstance(exc, openai.APITimeoutError):
        return ModelCallError(message, kind="timeout")
    if isinstance(exc, openai.APIConnectionError):
        return ModelCallError(message, kind="connection")
    if isinstance(exc, openai.APIStatusError):
        return ModelCallError(
            message,
            kind="http",
            status=exc.status_code,
            retry_after_s=parse_retry_after(exc.response.headers),
        )
    if isinstance(exc, openai.APIResponseValidationError | ValueError):
        return ModelCallError(message, kind="malformed")
    return ModelCallError(message, kind="malformed" if "JSON" in message else "other")


def build(spec: MemberSpec, pool: ResourcePool) -> Model:
    key = _api_key(spec)
    base_url = spec.base_url
    client = pool.get(
        ("openai", base_url, spec.api_key_env),
        lambda: openai.AsyncOpenAI(api_key=key, base_url=base_url, max_retries=0),
        lambda c: c.close(),
    )
    return OpenAICompatModel(spec, client, key)
