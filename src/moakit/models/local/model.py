"""``LocalModel``: the embedded llama.cpp model behind the ``Model`` interface.

Each call becomes one sequence of the model file's shared batch scheduler, so the members of a
layer (and concurrent queries) decode together instead of queueing behind a lock. The event loop
is never blocked: prompt rendering runs in a worker thread, decoding on the scheduler thread,
and text comes back through an ``asyncio.Queue``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from moakit.errors import ConfigError, ModelCallError
from moakit.messages import ChatRequest, Chunk, Usage
from moakit.models.base import Model
from moakit.models.local.runtime import RuntimeKey, is_loaded, shared_runtime
from moakit.models.local.sampling import (
    DEFAULT_SEED,
    DEFAULT_TEMPERATURE,
    DEFAULT_TOP_P,
    SamplingParams,
    grammar_for,
)
from moakit.models.local.scheduler import Delta, Failed, Finished, SequenceEvent, SequenceRequest
from moakit.models.local.tool_calls import ToolCallReader
from moakit.models.local.tools import ToolPlan, call_ids, plan_tools
from moakit.models.local.weights import resolve_model_path
from moakit.models.profile import ModelProfile

# KV budget of a model file: N_SEQ_MAX sequences decoded together (more wait in the queue), each
# with N_CTX cells for its prompt and answer. Allocated at load: 4 × 4096 cells is ~200 MB for
# Qwen2.5-0.5B (12 KiB a cell) and ~380 MB for SmolLM2-135M (23 KiB a cell).
DEFAULT_N_CTX = 4096
DEFAULT_N_SEQ_MAX = 4
DEFAULT_MAX_TOKENS = 512


class LocalModel(Model):
    # JSON output through a llama.cpp grammar. Prefill: a partial answer is appended to the
    # rendered prompt as plain text tokens (never special ones, so the partial answer cannot
    # close its own turn) and continued; the scheduler's kept streams mean the unchanged start
    # of the prompt is not decoded again. Tools: rendered through the model's chat template, the
    # calls constrained by a grammar built from the tools' schemas (``tools.py``).
    profile = ModelProfile(response_format=True, prefill=True, tools=True)

    def __init__(self, model: str, options: dict[str, Any] | None = None) -> None:
        options = options or {}
        self.name = model
        self.path = resolve_model_path(model)
        self.key = RuntimeKey(
            path=str(self.path),
            n_ctx=_positive_int(options, "n_ctx", DEFAULT_N_CTX),
            n_seq_max=_positive_int(options, "n_seq_max", DEFAULT_N_SEQ_MAX),
        )

    def loaded(self) -> bool:
        return is_loaded(self.key)

    async def load(self) -> None:
        await asyncio.to_thread(shared_runtime, self.key)

    async def stream(self, request: ChatRequest) -> AsyncIterator[Chunk]:
        try:
            plan = await asyncio.to_thread(plan_tools, request)
            sampling = _sampling(request, plan)
            runtime = await asyncio.to_thread(shared_runtime, self.key)
            prompt = await asyncio.to_thread(
                runtime.template.render, request.messages, plan.rendered
            )
            tokens = prompt.tokens
            if request.prefill:
                tokens = [*tokens, *await asyncio.to_thread(runtime.tokenize, request.prefill)]
        except ConfigError as exc:
            raise ModelCallError(str(exc), kind="other") from exc
        reader = ToolCallReader(plan.mode, call_ids(request.seed, tokens))
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[SequenceEvent] = asyncio.Queue()

        def emit(event: SequenceEvent) -> None:  # on the scheduler thread
            try:
                loop.call_soon_threadsafe(events.put_nowait, event)
            except RuntimeError:  # the caller's loop is closed: nobody is listening any more
                sequence.cancelled.set()

        sequence = SequenceRequest(
            prompt=tokens,
            max_tokens=request.max_tokens or DEFAULT_MAX_TOKENS,
            sampling=sampling,
            emit=emit,
            # A stop string is for text: an answer that can only be calls ignores the caller's.
            stop=[*(request.stop or ()), *prompt.stop] if plan.mode != "calls" else prompt.stop,
        )
        try:
            runtime.scheduler.submit(sequence)
            while True:
                event = await events.get()
                if isinstance(event, Delta):
                    text, calls = reader.feed(event.text)
                    if text or calls:
                        yield Chunk(text=text, tool_calls=tuple(calls))
                elif isinstance(event, Finished):
                    usage = Usage(
                        prompt_tokens=event.prompt_tokens,
                        completion_tokens=event.completion_tokens,
                    )
                    try:
                        text, calls = reader.finish(truncated=event.finish_reason == "length")
                    except ModelCallError as exc:  # the tokens were spent all the same
                        exc.usage = usage
                        raise
                    if text or calls:
                        yield Chunk(text=text, tool_calls=tuple(calls))
                    reason = event.finish_reason
                    if reader.calls and reason == "stop":
                        reason = "tool_calls"
                    yield Chunk(finish_reason=reason, usage=usage)
                    return
                elif isinstance(event, Failed):
                    error = event.error
                    if isinstance(error, ModelCallError):
                        raise error
                    raise ModelCallError(f"llama.cpp failed: {error}", kind="other") from error
        finally:
            # Cancelled or closed early: the scheduler drops the sequence at its next step.
            sequence.cancelled.set()


def _sampling(request: ChatRequest, plan: ToolPlan) -> SamplingParams:
    return SamplingParams(
        temperature=DEFAULT_TEMPERATURE if request.temperature is None else request.temperature,
        top_p=DEFAULT_TOP_P if request.top_p is None else request.top_p,
        presence_penalty=request.presence_penalty or 0.0,
        frequency_penalty=request.frequency_penalty or 0.0,
        seed=DEFAULT_SEED if request.seed is None else request.seed & 0xFFFFFFFF,
        grammar=plan.grammar or grammar_for(request.response_format),
        grammar_source="tools" if plan.grammar else "response_format",
    )


def _positive_int(options: dict[str, Any], name: str, default: int) -> int:
    value = options.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"options.{name} must be a positive integer", field=f"options.{name}")
    return value
