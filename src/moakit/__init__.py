"""moakit: Mixture-of-Agents as a library, a CLI and an OpenAI-compatible server.

    import moakit
    result = moakit.run("Why is the sky blue?")            # embedded local preset
    print(result.final)

The async core is ``Stack``; ``run``/``arun`` are conveniences around it.
"""

from __future__ import annotations

from importlib import import_module
from pathlib import Path
from typing import TYPE_CHECKING, Any

# The public names live in submodules that pull in pydantic, the engine and the trace store.
# They are imported on first use (PEP 562), so that `import moakit.cli.main` for `moa --help`,
# or any one submodule, does not pay for all of them. Type checkers see the real imports.
if TYPE_CHECKING:
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
    from moakit.messages import (
        ChatRequest,
        ForceTool,
        Message,
        MessagesLike,
        ToolCall,
        ToolResult,
        ToolSpec,
        Usage,
    )
    from moakit.models.base import Model
    from moakit.result import MemberOutput, Result
    from moakit.trace import BaseTraceStore as BaseTraceStore
    from moakit.trace import TraceRecorder as TraceRecorder
    from moakit.trace import TraceStore as TraceStore
    from moakit.trace import default_store as default_store
    from moakit.trace import traced_run as traced_run

_LAZY: dict[str, str] = {
    **dict.fromkeys(
        (
            "AggregatorSpec",
            "LayerSpec",
            "MemberSpec",
            "ResolvedMember",
            "StackConfig",
            "load_preset",
            "parse_config",
            "read_config_file",
            "resolve_stack",
        ),
        "moakit.config",
    ),
    "Stack": "moakit.engine",
    **dict.fromkeys(
        (
            "AggregatorFailed",
            "ConfigError",
            "DeadlineExceeded",
            "LayerFailed",
            "MissingKeyError",
            "MoaError",
            "ModelCallError",
            "QueryFailed",
            "StackFailed",
        ),
        "moakit.errors",
    ),
    **dict.fromkeys(
        ("ChatRequest", "ForceTool", "Message", "MessagesLike", "ToolCall", "ToolResult"),
        "moakit.messages",
    ),
    **dict.fromkeys(("ToolSpec", "Usage"), "moakit.messages"),
    "Model": "moakit.models.base",
    **dict.fromkeys(("MemberOutput", "Result"), "moakit.result"),
    **dict.fromkeys(
        ("BaseTraceStore", "TraceRecorder", "TraceStore", "default_store", "traced_run"),
        "moakit.trace",
    ),
    **dict.fromkeys(("Register", "hookimpl"), "moakit.hookspecs"),
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is not None:
        value = getattr(import_module(module), name)
        globals()[name] = value  # later lookups skip this function
        return value
    if not name.startswith("_"):
        # `import moakit; moakit.engine.Stack` worked while `import moakit`
        # imported the engine: a submodule is still reachable as an attribute.
        try:
            return import_module(f"moakit.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"moakit.{name}":
                raise
    raise AttributeError(f"module 'moakit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


from moakit.version import __version__ as __version__  # noqa: E402 (after the lazy table)


def as_messages(prompt: MessagesLike) -> tuple[Message, ...]:
    from moakit.messages import as_messages as typed

    return typed(prompt)


async def arun(
    prompt: MessagesLike,
    *,
    preset: str | None = None,
    config: StackConfig | str | Path | None = None,
    trace: bool | BaseTraceStore = False,
) -> Result:
    """Answer ``prompt`` (a question or an OpenAI-style message list) with a stack.

    ``trace=True`` records the run in the default trace store (``moa trace list`` shows it);
    a trace store (``open_trace_store(path_or_url)``) records it there. The library records
    nothing unless asked."""
    from moakit.config import StackConfig, resolve_stack
    from moakit.engine import Stack
    from moakit.trace import TraceRecorder, default_store, traced_run

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
    prompt: MessagesLike,
    *,
    preset: str | None = None,
    config: StackConfig | str | Path | None = None,
    trace: bool | BaseTraceStore = False,
) -> Result:
    """Sync wrapper over ``arun`` for scripts. Inside a running event loop, await ``arun``."""
    import asyncio

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
    "ForceTool",
    "LayerFailed",
    "LayerSpec",
    "MemberOutput",
    "MemberSpec",
    "Message",
    "MessagesLike",
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
    "ToolCall",
    "ToolResult",
    "ToolSpec",
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
