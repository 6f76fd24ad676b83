"""``moa chat``: a multi-turn conversation with a stack, on the terminal.

One event loop for the whole chat (``asyncio.Runner``), entered once per answer, so a Ctrl-C
while an answer is written cancels that answer (its calls, its trace marked cancelled) and the
chat goes on; a Ctrl-C at the prompt only reminds how to leave.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import click
from rich.text import Text

from moakit.cli.ask import (
    TerminalView,
    answer,
    progress_console,
    recorder_or_warning,
    with_stack_options,
)
from moakit.cli.literal import one_line
from moakit.config import StackConfig, resolve_stack
from moakit.engine import Stack
from moakit.errors import QueryFailed
from moakit.models.base import Message

HELP = """commands:
  /help         this list
  /clear        forget the conversation so far
  /exit, /quit  leave (Ctrl-D too)
Ctrl-C while an answer is being written stops that answer; the chat goes on."""


@click.command("chat")
@with_stack_options
def chat_cmd(preset: str | None, config_path: Path | None) -> None:
    """Multi-turn chat: every layer sees the whole conversation. /help lists the commands;
    Ctrl-C stops an answer, Ctrl-D or /exit quits."""
    config = resolve_stack(preset, config_path)
    progress = progress_console()
    view = TerminalView(progress, sys.stdout)
    history: list[Message] = []
    with asyncio.Runner() as runner:
        stack = runner.run(_build(config))
        recorder = recorder_or_warning(stack, progress)
        try:
            while True:
                try:
                    line = input("you> ")
                except EOFError:
                    return
                except KeyboardInterrupt:
                    progress.print(Text("\n(Ctrl-D or /exit quits; /help lists the commands)"))
                    continue
                command = line.strip()
                if command in ("/exit", "/quit"):
                    return
                if command == "/help":
                    click.echo(HELP)
                    continue
                if command == "/clear":
                    history.clear()
                    progress.print(Text("(conversation cleared)", style="dim"))
                    continue
                if command.startswith("/") and " " not in command:
                    progress.print(Text(f"unknown command {one_line(command)}; /help lists them"))
                    continue
                if not command:
                    continue
                history.append(Message.user(line))
                try:
                    result = runner.run(answer(stack, history, view, recorder))
                except KeyboardInterrupt:
                    # Runner cancelled the answer (its calls with it); the turn is dropped.
                    view.stopped()
                    progress.print(Text("answer stopped", style="yellow"))
                    history.pop()
                    continue
                except QueryFailed as exc:
                    # This turn failed; the conversation goes on without it.
                    progress.print(Text.assemble(("error: ", "red"), one_line(str(exc))))
                    history.pop()
                    continue
                history.append(Message.assistant(result.final))
        finally:
            runner.run(stack.aclose())


async def _build(config: StackConfig) -> Stack:
    # Built inside the chat's event loop, which its clients and limiters then belong to.
    return Stack(config)
