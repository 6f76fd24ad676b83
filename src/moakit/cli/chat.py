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
    tools_option,
    with_stack_options,
)
from moakit.cli.literal import one_line
from moakit.cli.tools_file import load_tools
from moakit.config import StackConfig, resolve_stack
from moakit.engine import Stack
from moakit.errors import QueryFailed
from moakit.models.base import Message

HELP = """commands:
  /help         this list
  /clear        forget the conversation so far
  /exit, /quit  leave (Ctrl-D too)
Ctrl-C while an answer is being written stops that answer; the chat goes on.
With --tools, an answer may be tool calls: type each call's result when asked (you run the
tool), and the stack goes on with them."""


@click.command("chat")
@with_stack_options
@tools_option
def chat_cmd(preset: str | None, config_path: Path | None, tools_path: Path | None) -> None:
    """Multi-turn chat: every layer sees the whole conversation. /help lists the commands;
    Ctrl-C stops an answer, Ctrl-D or /exit quits."""
    tools = load_tools(tools_path) if tools_path is not None else ()
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
                turn_start = len(history)
                history.append(Message.user(line))
                try:
                    while True:
                        result = runner.run(answer(stack, history, view, recorder, tools))
                        history.append(Message.assistant(result.final, result.tool_calls))
                        if not result.tool_calls:
                            break
                        # The user runs the tools: their results continue the same turn.
                        for call in result.tool_calls:
                            content = input(f"result of {one_line(call.name)}> ")
                            history.append(Message.tool(call.id, content, name=call.name))
                except KeyboardInterrupt:
                    # Runner cancelled the answer (its calls with it); the turn is dropped.
                    view.stopped()
                    progress.print(Text("answer stopped", style="yellow"))
                    del history[turn_start:]
                    continue
                except EOFError:
                    return
                except QueryFailed as exc:
                    # This turn failed; the conversation goes on without it.
                    progress.print(Text.assemble(("error: ", "red"), one_line(str(exc))))
                    del history[turn_start:]
                    continue
        finally:
            runner.run(stack.aclose())


async def _build(config: StackConfig) -> Stack:
    # Built inside the chat's event loop, which its clients and limiters then belong to.
    return Stack(config)
