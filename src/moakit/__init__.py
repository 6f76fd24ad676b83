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
from moakit.models.base import ChatRequest, Message, Model, Usage
from moakit.result import MemberOutput, Result

__version__ = "0.1.0"


def as_messages(prompt: str | Sequence[Message]) -> list[Message]:
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    return [dict(m) for m in prompt]


async def arun(
    prompt: str | Sequence[Message],
    *,
    preset: str | None = None,
    config: StackConfig | str | Path | None = None,
) -> Result:
    """Answer ``prompt`` (a question or an OpenAI-style message list) with a stack."""
    stack_config = config if isinstance(config, StackConfig) else resolve_stack(preset, config)
    async with Stack(stack_config) as stack:
        return await stack.run(as_messages(prompt))


def run(
    prompt: str | Sequence[Message],
    *,
    preset: str | None = None,
    config: StackConfig | str | Path | None = None,
) -> Result:
    """Sync wrapper over ``arun`` for scripts. Inside a running event loop, await ``arun``."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(arun(prompt, preset=preset, config=config))
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
    "ResolvedMember",
    "Result",
    "Stack",
    "StackConfig",
    "StackFailed",
    "Usage",
    "arun",
    "as_messages",
    "load_preset",
    "parse_config",
    "read_config_file",
    "resolve_stack",
    "run",
]
