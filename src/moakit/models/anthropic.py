"""Anthropic models through the official ``anthropic`` SDK.

The Messages API takes the system prompt as a separate parameter and only user/assistant turns,
so leading OpenAI-style system messages are lifted out and joined.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Sequence
from typing import Any, ClassVar

import anthropic

from moakit.config import DEFAULT_KEY_ENV, MemberSpec, key_env_for
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
    # Assistant prefill: a trailing assistant turn is continued, not answered.
    supports_prefill: ClassVar[bool] = True
    # The Messages API has no presence/frequency penalties; the server refuses them with a
    # 400 up front when this model aggregates, rather than dropping them.
    supports_penalties: ClassVar[bool] = False

    def __init__(self, spec: MemberSpec, client: anthropic.AsyncAnthropic, key: str) -> None:
        self.name = spec.model
        self._client = client
        self._key = key

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
        yield Chunk(finish_reason=_FINISH.get(final.stop_reason or "", "stop"), usage=usage)


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
        )
    return ModelCallError(message, kind="other")


def build(spec: MemberSpec, pool: ResourcePool) -> Model:
    env = key_env_for(spec, "anthropic") or DEFAULT_KEY_ENV["anthropic"]
    key = os.environ.get(env)
    if not key:
        raise MissingKeyError(env, who=f"model {spec.model!r}")
    client = pool.get(
        ("anthropic", spec.base_url, env),
        lambda: anthropic.AsyncAnthropic(api_key=key, base_url=spec.base_url, max_retries=0),
        lambda c: c.close(),
    )
    return AnthropicModel(spec, client, key)
