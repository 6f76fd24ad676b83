"""Tools from the CLI: ``moa ask --tools FILE.json`` offers them (a bad file is refused naming
the field), a returned tool call is printed plainly (``tool call: NAME(ARGUMENTS)``, markup and
control characters never obeyed), ``--json`` carries the calls, and ``moa chat --tools`` asks
the user for each call's result and goes on with it."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from moakit import Stack
from moakit.cli.ask import ask_cmd
from moakit.cli.chat import chat_cmd
from moakit.config import StackConfig
from moakit.messages import ChatRequest, Completion, ToolCall
from moakit.testing.models import FunctionModel
from moakit.trace import TraceStore

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
# Rich markup and an escape sequence a terminal would obey, in the model's arguments.
MARKUP_ARGS = '{"city": "[bold red]Paris[/bold red] [link=http://x]y[/link]"}'

STACK_TOML = """
name = "cli-tools"
[[layers]]
members = [{ model = "a" }, { model = "b" }]
[aggregator]
model = "agg"
"""


class Doubles:
    """Test doubles for the stack the CLI builds: proposers, and an aggregator that answers
    ``replies`` in turn (the last one from then on)."""

    def __init__(self, *replies: Completion | str) -> None:
        self.replies = replies
        self.agg = FunctionModel(self._answer, name="agg", tools=True)

    def _answer(self, request: ChatRequest) -> Completion | str:
        n = len(self.agg.requests)
        return self.replies[min(n, len(self.replies)) - 1]

    def stack(self, config: StackConfig) -> Stack:
        models = {
            "a": FunctionModel(lambda r: "call get_weather", name="a"),
            "b": FunctionModel(lambda r: "get_weather(Paris)", name="b"),
            "agg": self.agg,
        }
        return Stack(config, models=models)


@pytest.fixture
def files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    monkeypatch.setenv("MOAKIT_TRACE_DB", str(tmp_path / "traces.db"))
    monkeypatch.delenv("MOAKIT_TRACE", raising=False)
    stack = tmp_path / "stack.toml"
    stack.write_text(STACK_TOML)
    tools = tmp_path / "tools.json"
    tools.write_text(json.dumps([WEATHER]))
    return {"stack": stack, "tools": tools, "db": tmp_path / "traces.db"}


def use(doubles: Doubles, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("moakit.cli.ask.Stack", doubles.stack)
    monkeypatch.setattr("moakit.cli.chat.Stack", doubles.stack)


def calling(arguments: str = '{"city": "Paris"}') -> Completion:
    return Completion(text="", tool_calls=(ToolCall("call_1", "get_weather", arguments),))


def test_ask_offers_the_tools_and_prints_the_call_plainly(
    files: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    doubles = Doubles(calling(MARKUP_ARGS))
    use(doubles, monkeypatch)
    args = ["-c", str(files["stack"]), "--tools", str(files["tools"]), "-q", "Weather?"]
    result = CliRunner().invoke(ask_cmd, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    # Exactly the call, as the model wrote it: Rich markup stays characters.
    assert result.stdout == f"tool call: get_weather({MARKUP_ARGS})\n"
    (sent,) = doubles.agg.requests
    assert [t.to_openai() for t in sent.tools] == [WEATHER]
    # The query was recorded with its call (by the CLI's store's writer thread: wait for it).
    with TraceStore(files["db"]) as store:
        deadline = time.monotonic() + 10
        while (rows := store.list_queries())[0].status != "complete":
            assert time.monotonic() < deadline, rows
            time.sleep(0.02)
    (row,) = rows
    assert row.source == "cli" and row.tool_calls[0].arguments == MARKUP_ARGS
    assert row.advice == "fresh"


def test_ask_json_carries_the_tool_calls(
    files: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    use(Doubles(Completion(text="Let me check.", tool_calls=calling().tool_calls)), monkeypatch)
    args = ["-c", str(files["stack"]), "--tools", str(files["tools"]), "--json", "Weather?"]
    result = CliRunner().invoke(ask_cmd, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    body = json.loads(result.stdout)
    assert body["tool_calls"] == [
        {"id": "call_1", "name": "get_weather", "arguments": '{"city": "Paris"}'}
    ]
    assert body["final"] == "Let me check." and body["advice"] == "fresh"


def test_text_then_calls_share_the_answer_stream_one_per_line() -> None:
    from moakit.cli.ask import TerminalView, progress_console
    from moakit.events import RunFinished, TextDelta, ToolCalls
    from moakit.result import Result

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    out = Terminal()
    view = TerminalView(progress_console(quiet=True), out)
    two = (
        ToolCall("c1", "get_weather", '{"city": "\x1b[2JParis"}'),
        ToolCall("c2", "get_weather", '{"city": "Lyon"}'),
    )
    view(TextDelta(text="Checking.", run_id="r", ts=0.0))
    view(ToolCalls(calls=two, run_id="r", ts=0.0))
    view(RunFinished(result=Result(stack="s"), run_id="r", ts=0.0))
    # On a terminal an escape sequence in the arguments is shown, never obeyed.
    assert out.getvalue() == (
        "Checking.\n"
        'tool call: get_weather({"city": "\\x1b[2JParis"})\n'
        'tool call: get_weather({"city": "Lyon"})\n'
    )


@pytest.mark.parametrize(
    ("content", "field"),
    [
        ("not json", "is not JSON"),
        ("{}", "tools: must be a non-empty array"),
        ('[{"type": "web_search"}]', "tools.0.type: only function tools"),
        ('[{"type": "function", "function": {"name": "get weather"}}]', "tools.0.function.name"),
        (
            '[{"type": "function", "function": {"name": "f", "parameters": []}}]',
            "tools.0.function.parameters: must be a JSON schema object",
        ),
        (
            '[{"type": "function", "function": {"name": "f"}},'
            ' {"type": "function", "function": {"name": "f"}}]',
            "tools.1.function.name: 'f' is defined twice",
        ),
        ('[{"type": "function", "function": {"name": "f", "nme": 1}}]', "tools.0.function.nme"),
    ],
)
def test_a_bad_tools_file_is_refused_naming_the_field(
    files: dict[str, Path], monkeypatch: pytest.MonkeyPatch, content: str, field: str
) -> None:
    doubles = Doubles("never asked")
    use(doubles, monkeypatch)
    files["tools"].write_text(content)
    args = ["-c", str(files["stack"]), "--tools", str(files["tools"]), "Weather?"]
    result = CliRunner().invoke(ask_cmd, args)
    assert result.exit_code == 2
    assert field in result.output and str(files["tools"]) in result.output
    assert "--tools" in result.output
    assert not doubles.agg.requests  # refused before any call


def test_chat_asks_for_each_result_and_goes_on(
    files: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    doubles = Doubles(calling(), "It is 18 C in Paris.", "You are welcome.")
    use(doubles, monkeypatch)
    args = ["-c", str(files["stack"]), "--tools", str(files["tools"])]
    typed = "Weather in Paris?\n18 C and sunny\nThanks!\n/exit\n"
    result = CliRunner().invoke(chat_cmd, args, input=typed, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert 'tool call: get_weather({"city": "Paris"})' in result.stdout
    assert "result of get_weather> " in result.stdout
    assert "It is 18 C in Paris." in result.stdout and "You are welcome." in result.stdout
    _, second, third = doubles.agg.requests
    # The second request carries the call and the result the user typed.
    roles = [m.role for m in second.messages[1:]]
    assert roles == ["user", "assistant", "tool"]
    assert second.messages[-2].tool_calls == calling().tool_calls
    assert second.messages[-1].tool_results[0].content == "18 C and sunny"
    assert second.messages[-1].tool_results[0].tool_call_id == "call_1"
    # The next user turn follows the whole exchange.
    assert [m.role for m in third.messages[1:]] == [
        "user",
        "assistant",
        "tool",
        "assistant",
        "user",
    ]
