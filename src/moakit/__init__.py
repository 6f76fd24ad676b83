"""moakit: Mixture-of-Agents as a library, a CLI and an OpenAI-compatible server.

    import moakit
    result = moakit.run("Why is the sky blue?")            # embedded local preset
    print(result.final)

The async core is ``Stack``; ``run``/``arun`` are conveniences around it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

from moakit.config import (
    AggregatorSpec,
    LayerSpec,
    MemberSpec,
    ResolvedMember,
    StackConfig,
    load_preset,
    parse_config,
    read_config_file,
    resolve_stack,
)
from moakit.engine import Stack
from moakit.errors import (
    AggregatorFailed,
    ConfigError,
    DeadlineExceeded,
    LayerFailed,
    MissingKeyError,
    MoaError,
    ModelCallError,
    QueryFailed,
    StackFailed,
)
from moakit.hookspecs import Register, hookimpl
from moakit.models.base import ChatRequest, Message, Model, Usage
from moakit.result import MemberOutput, Result
from moakit.trace import BaseTraceStore, TraceRecorder, default_store, traced_run
from moakit.version import __version__ as __version__


def as_messages(prompt: str | Sequence[Message]) -> list[Message]:
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    return [dict(m) for m in prompt]


async def arun(
    prompt: str | Sequence[Message],
    *,
    preset: str | None = None,
    config: StackConfig | str | Path | None = None,
    trace: bool | BaseTraceStore = False,
) -> Result:
    """Answer ``prompt`` (a question or an OpenAI-style message list) with a stack.

    ``trace=True`` records the run in the default trace store (``moa trace list`` shows it);
    a trace store (``open_trace_store(path_or_url)``) records it there. The library records
    nothing unless asked."""
    stack_config = config if isinstance(config, StackConfig) else resolve_stack(preset, config)
    async with Stack(stack_config) as stack:
        if trace is False:
            return await stack.run(as_messages(prompt))
        store = default_store() if trace is True else trace
        try:
            recorder = TraceRecorder(store, stack=stack, source="library")
            return await traced_run(stack, as_messages(prompt), recorder)
        finally:
            if trace is True:
                store.close()  # ours: commit what is queued and release the file


def run(
    prompt: str | Sequence[Message],
    *,
    preset: str | None = None,
    config: StackConfig | str | Path | None = None,
    trace: bool | BaseTraceStore = False,
) -> Result:
    """Sync wrapper over ``arun`` for scripts. Inside a running event loop, await ``arun``."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(arun(prompt, preset=preset, config=config, trace=trace))
    raise RuntimeError("moakit.run() was called inside an event loop; use `await moakit.arun()`")


__all__ = [
    "AggregatorFailed",
    "AggregatorSpec",
    "ChatRequest",
    "ConfigError",
    "DeadlineExceeded",
    "LayerFailed",
    "LayerSpec",
    "MemberOutput",
    "MemberSpec",
    "Message",
    "MissingKeyError",
    "MoaError",
    "Model",
    "ModelCallError",
    "QueryFailed",
    "Register",
    "ResolvedMember",
    "Result",
    "Stack",
    "StackConfig",
    "StackFailed",
    "Usage",
    "arun",
    "as_messages",
    "hookimpl",
    "load_preset",
    "parse_config",
    "read_config_file",
    "resolve_stack",
    "run",
]
