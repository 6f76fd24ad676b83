"""Test doubles (pydantic-ai's FunctionModel idea): a model whose answer is a Python function of
the request. Shipped so users can test their own stacks without a network."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Union

from moakit.models.base import ChatRequest, Chunk, Completion, Model, Usage, approx_tokens
from moakit.models.profile import ModelProfile

# A reply is the answer's text, an exception (the call fails), or a ``Completion`` (text and
# tool calls: what a model that was offered tools may answer).
Reply = Union[str, Completion, "Exception"]
AnswerFn = Callable[[ChatRequest], Reply | Awaitable[Reply]]


class FunctionModel(Model):
    """Answers with ``fn(request)``; raising (or returning) an exception makes the call fail.
    ``delay_s`` sleeps before answering, ``per_token_s`` between streamed words; ``requests``
    records every request received. ``prefill=True`` declares ``profile.prefill``: ``fn``
    then sees ``request.prefill`` and returns only the continuation. ``tools=True`` declares
    ``profile.tools``: ``fn`` may then return a ``Completion`` with tool calls."""

    def __init__(
        self,
        fn: AnswerFn,
        *,
        name: str = "function",
        delay_s: float = 0.0,
        per_token_s: float = 0.0,
        prefill: bool = False,
        tools: bool = False,
    ) -> None:
        self.name = name
        self.fn = fn
        self.delay_s = delay_s
        self.per_token_s = per_token_s
        self.requests: list[ChatRequest] = []
        self.profile = ModelProfile(prefill=prefill, tools=tools)

    async def stream(self, request: ChatRequest) -> AsyncIterator[Chunk]:
        self.requests.append(request)
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        reply = self.fn(request)
        if inspect.isawaitable(reply):
            reply = await reply
        if isinstance(reply, Exception):
            raise reply
        calls = reply.tool_calls if isinstance(reply, Completion) else ()
        if isinstance(reply, Completion):
            reply = reply.text
        words = reply.split(" ") if reply else []
        for i, word in enumerate(words):
            if i and self.per_token_s:
                await asyncio.sleep(self.per_token_s)
            yield Chunk(text=word if i == 0 else " " + word)
        prompt = sum(approx_tokens(m.text) for m in request.messages)
        yield Chunk(
            finish_reason="tool_calls" if calls else "stop",
            usage=Usage(prompt_tokens=prompt, completion_tokens=approx_tokens(reply)),
            tool_calls=calls,
        )


def echo_model(name: str, *, delay_s: float = 0.0) -> FunctionModel:
    """Answers ``"<name>: <last user message>"``."""

    def fn(request: ChatRequest) -> str:
        return f"{name}: {request.messages[-1].text}"

    return FunctionModel(fn, name=name, delay_s=delay_s)
