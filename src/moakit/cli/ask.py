"""``moa ask`` and ``moa chat``: progress of the layers on stderr, the answer streamed on stdout.

The terminal is one observer of the run (``TerminalView``), like the server and a trace
recorder. Everything a model or an upstream server wrote (answers, labels, error texts) is
printed literally: never parsed as Rich markup or emoji codes, and progress lines never wrap.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO, TypeVar

import click
from rich.console import Console
from rich.text import Text

from moakit.cli.literal import literal, one_line
from moakit.cli.tools_file import load_tools
from moakit.config import resolve_stack
from moakit.engine import Stack
from moakit.errors import QueryFailed
from moakit.events import (
    AggregatorAttemptFailed,
    AggregatorStarted,
    Decided,
    Event,
    LayerFinished,
    LayerStarted,
    MemberFinished,
    RunFailed,
    RunFinished,
    TextDelta,
    ToolCalls,
)
from moakit.messages import ChatRequest, ToolCall, ToolSpec
from moakit.models.base import Message
from moakit.result import Result
from moakit.trace import TraceRecorder, TraceStoreError, default_recorder, traced_run

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


def progress_console(*, quiet: bool = False) -> Console:
    # markup/emoji off: untrusted text is only ever passed inside Text objects, and these
    # flags make a slip harmless too. soft_wrap: a long line stays one line when piped.
    return Console(
        stderr=True, quiet=quiet, soft_wrap=True, markup=False, emoji=False, highlight=False
    )


class TerminalView:
    """Draws a run: progress lines on ``progress``, the answer as it streams on ``out``.

    Stream rule, terminal side: text once written is never taken back. If the run fails after
    some answer text was written, the answer line is ended and the error (printed by ``moa``'s
    error handler) goes to stderr alone, so stdout never holds two answers.

    Progress lines that arrive while the answer streams (a staircase run's proposers finish
    after the answer has begun) are held and printed once the answer line ends: on a terminal
    stdout and stderr share the screen, and a line dropped into the answer would split it."""

    def __init__(self, progress: Console, out: TextIO | None) -> None:
        self.progress = progress
        self.out = out
        # On a terminal, control characters in the answer are shown, not obeyed; piped
        # output stays byte-exact for the program reading it.
        self.show: Callable[[str], str] = (
            literal if out is not None and out.isatty() else (lambda text: text)
        )
        self.wrote_text = False
        self._held: list[Text] = []

    def line(self, *parts: str | tuple[str, str]) -> None:
        """One progress line. Plain ``str`` parts are untrusted (labels, error texts)."""
        text = Text.assemble(*(one_line(p) if isinstance(p, str) else p for p in parts))
        if self.wrote_text:
            self._held.append(text)
        else:
            self.progress.print(text)

    def __call__(self, event: Event) -> None:
        if isinstance(event, TextDelta):
            if self.out is not None and event.text:
                self.out.write(self.show(event.text))
                self.out.flush()
                self.wrote_text = True
        elif isinstance(event, ToolCalls):
            # The answer's tool calls, for the caller to run: part of the answer, on stdout.
            if self.out is not None and event.calls:
                lead = "\n" if self.wrote_text else ""
                self.out.write(lead + "\n".join(self.show(tool_call_line(c)) for c in event.calls))
                self.out.flush()
                self.wrote_text = True
        elif isinstance(event, LayerStarted):
            self.line((f"layer {event.layer}", "bold"), f": {len(event.members)} members")
        elif isinstance(event, MemberFinished):
            m = event.output
            if m.ok:
                note = (" (truncated)", "yellow") if m.truncated else ""
                self.line(("  ✓ ", "green"), m.label, f" {m.latency_s:.2f}s", note)
            else:
                self.line(("  ✗ ", "red"), m.label, ": ", m.error or "no answer")
        elif isinstance(event, LayerFinished):
            layer = event.result
            self.line(f"  {layer.answered}/{len(layer.members)} answered in {layer.latency_s:.2f}s")
        elif isinstance(event, Decided):
            d = event.decision
            skipped = f" (skipped: {', '.join(d.skipped)})" if d.skipped else ""
            self.line((d.kind.replace("_", " "), "bold cyan"), ": ", d.detail, skipped)
        elif isinstance(event, AggregatorStarted):
            self.line(("aggregator", "bold"), f": {event.label} on {event.references} references")
        elif isinstance(event, AggregatorAttemptFailed):
            failed = event.failed
            more = (" (trying again)", "yellow") if event.will_retry else ""
            self.line(("  ✗ ", "red"), failed.label, ": ", failed.error or "failed", more)
        elif isinstance(event, RunFinished):
            self._end_answer(always=True)
            r = event.result
            if r.truncated:
                self.line(
                    ("answer truncated", "yellow"),
                    ": the aggregator stopped at its max_tokens limit (raise max_tokens on the "
                    "aggregator to get the rest)",
                )
            u = r.usage
            self.line(
                (
                    f"{r.llm_calls} calls, {r.serial_rounds} rounds, "
                    f"{u.prompt_tokens}+{u.completion_tokens} tokens, {r.latency_s:.2f}s",
                    "dim",
                )
            )
        elif isinstance(event, RunFailed):
            self._end_answer(always=False)

    def stopped(self) -> None:
        """The run was cancelled (Ctrl-C in ``moa chat``): end the answer line it left open."""
        self._end_answer(always=False)

    def _end_answer(self, *, always: bool) -> None:
        if self.out is not None and (always or self.wrote_text):
            self.out.write("\n")
            self.out.flush()
        self.wrote_text = False
        for text in self._held:
            self.progress.print(text)
        self._held.clear()


def tool_call_line(call: ToolCall) -> str:
    """``tool call: get_weather({"city": "Paris"})``: the call as the model wrote it (plain
    text: written to the answer stream, never through Rich)."""
    return f"tool call: {call.name}({call.arguments})"


tools_option = click.option(
    "--tools",
    "tools_path",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Offer these function tools (a JSON file: an OpenAI-style tools array). The answer "
    "may then be tool calls, printed as `tool call: NAME(ARGUMENTS)`.",
)


def recorder_or_warning(stack: Stack, progress: Console) -> TraceRecorder | None:
    """The default recorder; when the trace store cannot be used (a corrupt or foreign file),
    a warning and no recording: a broken audit trail never stops an answer."""
    try:
        return default_recorder(stack, source="cli")
    except TraceStoreError as exc:
        progress.print(
            Text.assemble(("warning: ", "yellow"), one_line(str(exc)), "; not recording this query")
        )
        return None


async def answer(
    stack: Stack,
    messages: list[Message],
    view: TerminalView,
    recorder: TraceRecorder | None,
    tools: tuple[ToolSpec, ...] = (),
) -> Result:
    # Streamed when the answer is shown as it comes; otherwise retries stay free.
    streaming = view.out is not None
    request = ChatRequest(messages=tuple(messages), tools=tools)
    if recorder is None:
        return await stack.run(request, observers=[view], streaming=streaming)
    return await traced_run(stack, request, recorder, observers=[view], streaming=streaming)


@click.command("ask")
@click.argument("question", required=False)
@with_stack_options
@tools_option
@click.option("--json", "as_json", is_flag=True, help="Print the whole result as JSON.")
@click.option("--quiet", "-q", is_flag=True, help="No progress on stderr.")
def ask_cmd(
    question: str | None,
    preset: str | None,
    config_path: Path | None,
    tools_path: Path | None,
    as_json: bool,
    quiet: bool,
) -> None:
    """Answer QUESTION (or stdin when piped) with a MoA stack."""
    # Checked before reading stdin or building the stack: a bad file fails fast.
    tools = load_tools(tools_path) if tools_path is not None else ()
    if question is None:
        if sys.stdin.isatty():
            raise click.UsageError("give a question, or pipe one on stdin")
        question = sys.stdin.read().strip()
    if not question:
        raise click.UsageError("the question is empty")
    config = resolve_stack(preset, config_path)
    view = TerminalView(progress_console(quiet=quiet), None if as_json else sys.stdout)

    async def go() -> Result:
        async with Stack(config) as stack:
            # Every CLI query is recorded (MOAKIT_TRACE=0 turns it off): `moa trace list`.
            # The store's writer commits what is queued before the process exits.
            recorder = recorder_or_warning(stack, view.progress)
            return await answer(stack, [Message.user(question)], view, recorder, tools)

    try:
        result = asyncio.run(go())
    except QueryFailed as exc:
        if as_json and exc.result is not None:
            # The partial result (with its error) is still worth having; moa exits 3.
            click.echo(json.dumps(exc.result.model_dump(mode="json"), indent=2))
        raise
    if as_json:
        click.echo(json.dumps(result.model_dump(mode="json"), indent=2))
