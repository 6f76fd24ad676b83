"""Anthropic models through the official ``anthropic`` SDK.

The Messages API takes the system prompt as a separate parameter and only user/assistant turns,
so leading OpenAI-style system messages are lifted out and joined.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Sequence
from typing import Any, ClassVar

import anthropic

from moakit.config import MemberSpec
from moakit.errors import MissingKeyError, ModelCallError
from moakit.models.base import ChatRequest, Chunk, Message, Model, Usage, message_text
from moakit.models.registry import ResourcePool
from moakit.retry import parse_retry_after
from moakit.secrets import scrub

# Anthropic requires max_tokens; this is used when neither the member nor the request sets it.
DEFAULT_MAX_TOKENS = 1024
_FINISH = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length"}


def split_system(messages: Sequence[Message]) -> tuple[str | None, list[dict[str, Any]]]:
    system = [message_text(m) for m in messages if m.get("role") == "system"]
    turns = [
        {"role": m["role"], "content": message_text(m)}
        for m in messages
        if m.get("role") in ("user", "assistant")
    ]
    return ("\n\n".join(system) if system else None), turns


class AnthropicModel(Model):
    # The Messages API has no presence/frequency penalties; the server refuses them with a
    # 400 up front when this model aggregates, rather than dropping them.
    supports_penalties: ClassVar[bool] = False

    def __init__(self, spec: MemberSpec, client: anthropic.AsyncAnthropic, key: str) -> None:
        self.name = spec.model
        self._client = client
        self._key = key

    async def stream(self, request: ChatRequest) -> AsyncIterator[Chunk]:
        system, turns = split_system(request.messages)
        params: dict[str, Any] = {
            "model": self.name,
            "messages": turns,
            "max_tokens": request.max_tokens or DEFAULT_MAX_TOKENS,
        }
        if system:
            params["system"] = system
        if request.temperature is not None:
            # Anthropic's range is 0..1; OpenAI-style configs may say up to 2.
            params["temperature"] = min(1.0, request.temperature)
        if request.stop:
            params["stop_sequences"] = list(request.stop)
        if request.top_p is not None:
            params["top_p"] = request.top_p
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(request, name) is not None:
                raise ModelCallError(f"{name} is not supported by Anthropic models", kind="other")
        try:
            async with self._client.messages.stream(**params) as stream:
                async for text in stream.text_stream:
                    if text:
                        yield Chunk(text=text)
                final = await stream.get_final_message()
        except anthropic.AnthropicError as exc:
            raise translate_error(exc, self._key) from None
        usage = Usage(
            prompt_tokens=final.usage.input_tokens, completion_tokens=final.usage.output_tokens
        )
        yield Chunk(finish_reason=_FINISH.get(final.stop_reason or "", "stop"), usage=usage)


def translate_error(exc: anthropic.AnthropicError, key: str) -> ModelCallError:
    message = scrub(str(exc), key)
    if isinstance(exc, anthropic.APITimeoutError):
        return ModelCallError(message, kind="timeout")
    if isinstance(exc, anthropic.APIConnectionError):
        return ModelCallError(message, kind="connection")
    if isinstance(exc, anthropic.APIStatusError):
        return ModelCallError(
            message,
            kind="http",
            status=exc.status_code,
            retry_after_s=parse_retry_after(exc.response.headers),
        )
    return ModelCallError(message, kind="other")


def build(spec: MemberSpec, pool: ResourcePool) -> Model:
    env = spec.api_key_env or "ANTHROPIC_API_KEY"
    key = os.environ.get(env)
    if not key:
        raise MissingKeyError(env, who=f"model {spec.model!r}")
    client = pool.get(
        ("anthropic", spec.base_url, env),
        lambda: anthropic.AsyncAnthropic(api_key=key, base_url=spec.base_url, max_retries=0),
        lambda c: c.close(),
    )
    return AnthropicModel(spec, client, key)
