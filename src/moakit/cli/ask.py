"""``moa ask`` and ``moa chat``: progress of the layers on stderr, the answer streamed on stdout."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console

from moakit.config import resolve_stack
from moakit.engine import Stack
from moakit.events import (
    AggregatorFailed,
    AggregatorStarted,
    LayerFinished,
    LayerStarted,
    MemberFinished,
    RunFinished,
    TextDelta,
)
from moakit.models.base import Message
from moakit.result import Result

stack_options = [
    click.option("--preset", "-p", default=None, help="Preset name (default: local)."),
    click.option(
        "--config",
        "-c",
        "config_path",
        type=click.Path(path_type=Path),
        default=None,
        help="Stack config file (TOML or YAML).",
    ),
]


F = TypeVar("F", bound=Callable[..., Any])


def with_stack_options(f: F) -> F:
    for option in reversed(stack_options):
        f = option(f)
    return f


async def answer(
    stack: Stack, messages: list[Message], *, progress: Console, out: Console | None
) -> Result:
    """Drive one run: progress lines to ``progress``, answer text to ``out`` as it streams."""
    result: Result | None = None
    async for event in stack.events(messages):
        if isinstance(event, LayerStarted):
            progress.print(f"[bold]layer {event.layer}[/]: {len(event.members)} members")
        elif isinstance(event, MemberFinished):
            m = event.output
            if m.ok:
                note = " [yellow](truncated)[/]" if m.truncated else ""
                progress.print(f"  [green]✓[/] {m.label} {m.latency_s:.2f}s{note}")
            else:
                progress.print(f"  [red]✗[/] {m.label}: {m.error}", markup=True, highlight=False)
        elif isinstance(event, LayerFinished):
            layer = event.layer
            progress.print(
                f"  {layer.answered}/{len(layer.members)} answered in {layer.latency_s:.2f}s"
            )
        elif isinstance(event, AggregatorStarted):
            progress.print(f"[bold]aggregator[/]: {event.label} on {event.references} references")
        elif isinstance(event, AggregatorFailed):
            progress.print(f"  [red]✗[/] {event.failed.label}: {event.failed.error}")
            if event.discard_text and out is not None:
                out.print("\n[aggregator failed mid-answer; restarting]\n", style="red")
        elif isinstance(event, TextDelta) and out is not None:
            out.file.write(event.text)
            out.file.flush()
        elif isinstance(event, RunFinished):
            result = event.result
    assert result is not None
    if out is not None:
        out.file.write("\n")
    u = result.usage
    progress.print(
        f"[dim]{result.llm_calls} calls, {result.serial_rounds} rounds, "
        f"{u.prompt_tokens}+{u.completion_tokens} tokens, {result.latency_s:.2f}s[/]"
    )
    return result


@click.command("ask")
@click.argument("question", required=False)
@with_stack_options
@click.option("--json", "as_json", is_flag=True, help="Print the whole result as JSON.")
@click.option("--quiet", "-q", is_flag=True, help="No progress on stderr.")
def ask_cmd(
    question: str | None, preset: str | None, config_path: Path | None, as_json: bool, quiet: bool
) -> None:
    """Answer QUESTION (or stdin when piped) with a MoA stack."""
    if question is None:
        if sys.stdin.isatty():
            raise click.UsageError("give a question, or pipe one on stdin")
        question = sys.stdin.read().strip()
    if not question:
        raise click.UsageError("the question is empty")
    config = resolve_stack(preset, config_path)
    progress = Console(stderr=True, quiet=quiet)
    out = None if as_json else Console(file=sys.stdout)

    async def go() -> Result:
        async with Stack(config) as stack:
            return await answer(
                stack, [{"role": "user", "content": question}], progress=progress, out=out
            )

    result = asyncio.run(go())
    if as_json:
        click.echo(json.dumps(result.model_dump(mode="json"), indent=2))


@click.command("chat")
@with_stack_options
def chat_cmd(preset: str | None, config_path: Path | None) -> None:
    """Multi-turn chat: every layer sees the whole conversation. Ctrl-D or /exit quits."""
    config = resolve_stack(preset, config_path)
    progress = Console(stderr=True)
    out = Console(file=sys.stdout)

    async def go() -> None:
        history: list[Message] = []
        async with Stack(config) as stack:
            while True:
                try:
                    line = await asyncio.to_thread(input, "you> ")
                except EOFError:
                    return
                if line.strip() in ("/exit", "/quit"):
                    return
                if not line.strip():
                    continue
                history.append({"role": "user", "content": line})
                result = await answer(stack, history, progress=progress, out=out)
                history.append({"role": "assistant", "content": result.final})

    asyncio.run(go())
