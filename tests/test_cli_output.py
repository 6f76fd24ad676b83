"""``moa ask`` against the fault backend: untrusted text printed literally, progress lines that
never wrap when piped, the partial result on ``--json`` failure, and the stream rule on the
terminal (stdout never holds two answers)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from moakit.testing.fake_backend import Behavior, FakeBackend, Fault, expected_content

# Model names are echoed in the backend's error texts, so they carry the hostile strings.
MARKUP = "m[/INST] [bold]ok:100:"
LONG = "member-" + "x" * 150


def moa(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "moakit.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def backend() -> Iterator[FakeBackend]:
    with FakeBackend() as fb:
        yield fb


def write_stack(
    tmp_path: Path, base_url: str, members: list[str], *, fallback: bool = False
) -> Path:
    listed = ", ".join(json.dumps({"model": m}) for m in members).replace('":', '" =')
    fallbacks = '\nfallbacks = [{ model = "backup" }]' if fallback else ""
    path = tmp_path / "stack.toml"
    path.write_text(
        f'[defaults]\nbase_url = "{base_url}"\nmax_tokens = 30\n'
        "[retry]\ninitial_s = 0.01\nmax_s = 0.02\n"
        f"[[layers]]\nmembers = [{listed}]\n"
        f'[aggregator]\nmodel = "agg"{fallbacks}\n'
    )
    return path


def test_untrusted_error_text_is_printed_literally(tmp_path: Path, backend: FakeBackend) -> None:
    backend.set_behavior(MARKUP, Behavior(fault=Fault("http_500")))
    stack = write_stack(tmp_path, backend.base_url, [MARKUP, "good"])
    proc = moa("ask", "--config", str(stack), "hi")
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    failed = [line for line in proc.stderr.splitlines() if "✗" in line]
    assert len(failed) == 1
    # Markup stays text, emoji codes stay text.
    assert failed[0].startswith(f"  ✗ {MARKUP}: http 500: ")
    assert failed[0].endswith(f"injected HTTP 500 for model '{MARKUP}'")
    assert "💯" not in proc.stderr
    assert proc.stdout.startswith("agg saw")


def test_progress_lines_never_wrap_when_piped(tmp_path: Path, backend: FakeBackend) -> None:
    backend.set_behavior(LONG, Behavior(fault=Fault("http_500")))
    stack = write_stack(tmp_path, backend.base_url, [LONG, "good"])
    proc = moa("ask", "--config", str(stack), "hi")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    failed = [line for line in lines if "✗" in line]
    assert len(failed) == 1 and len(failed[0]) > 300
    assert failed[0].endswith(f"injected HTTP 500 for model '{LONG}'")
    assert all(line.strip() for line in lines)  # no wrapped remainder lines


def test_json_failure_prints_the_partial_result_and_exits_3(
    tmp_path: Path, backend: FakeBackend
) -> None:
    backend.set_default(Behavior(fault=Fault("http_500")))
    backend.set_behavior("good", Behavior())
    stack = write_stack(tmp_path, backend.base_url, ["good"])
    # The aggregator (default behaviour: http 500) fails; layer 1 answered.
    proc = moa("ask", "--json", "--config", str(stack), "hi")
    assert proc.returncode == 3, proc.stderr
    result = json.loads(proc.stdout)
    assert result["error"].startswith("every aggregator failed")
    assert result["layers"][0]["members"][0]["output"].startswith("good saw")
    assert result["aggregators"][0]["error"].startswith("http 500")
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert errors == [f"error: {result['error']}"]


def test_mid_stream_failure_leaves_one_partial_answer_and_exits_3(
    tmp_path: Path, backend: FakeBackend
) -> None:
    backend.set_behavior("agg", Behavior(fault=Fault("reset_mid_stream"), tokens=30))
    stack = write_stack(tmp_path, backend.base_url, ["p1", "p2"], fallback=True)
    proc = moa("ask", "--config", str(stack), "hi")
    assert proc.returncode == 3, proc.stderr
    # stdout: the part of the one answer that was sent, ended by a newline; nothing else.
    partial = proc.stdout.removesuffix("\n")
    assert proc.stdout.endswith("\n") and "\n" not in partial
    agg_messages = next(b for b in backend.stats.received if b["model"] == "agg")["messages"]
    assert partial and expected_content("agg", agg_messages, 30).startswith(partial)
    assert backend.stats.requests_by_model["agg"] == 1
    assert "backup" not in backend.stats.requests_by_model
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "aggregator agg failed mid-answer" in errors[0]


def test_answer_streams_to_stdout_exactly(tmp_path: Path, backend: FakeBackend) -> None:
    stack = write_stack(tmp_path, backend.base_url, ["p1"])
    proc = moa("ask", "--config", str(stack), "hi")
    assert proc.returncode == 0, proc.stderr
    agg_messages = next(b for b in backend.stats.received if b["model"] == "agg")["messages"]
    assert proc.stdout == expected_content("agg", agg_messages, 12) + "\n"


def test_chat_goes_on_after_a_failed_turn(tmp_path: Path, backend: FakeBackend) -> None:
    # The first turn's aggregator fails (once); the second turn answers with the whole history.
    backend.set_behavior("agg", Behavior(fault=Fault("http_500", times=3)))
    stack = write_stack(tmp_path, backend.base_url, ["p1"])
    proc = subprocess.run(
        [sys.executable, "-m", "moakit.cli.main", "chat", "--config", str(stack)],
        input="first\nsecond\n/exit\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and errors[0].startswith("error: every aggregator failed")
    answers = [line for line in proc.stdout.split("you> ") if line.strip()]
    assert len(answers) == 1 and answers[0].startswith("agg saw")
    last = [b for b in backend.stats.received if b["model"] == "agg"][-1]["messages"]
    assert [m["content"] for m in last if m["role"] == "user"] == ["second"]


def test_control_characters_are_shown_not_obeyed(tmp_path: Path, backend: FakeBackend) -> None:
    # ESC would recolour the terminal (or worse); BEL rings; CR rewrites the line.
    hostile = "m\x1b[2J\x1b]0;pwned\x07\rgone"
    backend.set_behavior(hostile, Behavior(fault=Fault("http_500")))
    stack = write_stack(tmp_path, backend.base_url, [hostile])
    proc = moa("ask", "--config", str(stack), "hi")
    assert proc.returncode == 3
    for char in "\x1b\x07\r":
        assert char not in proc.stderr
    shown = "m\\x1b[2J\\x1b]0;pwned\\x07\\x0dgone"
    assert any(line.startswith(f"  ✗ {shown}: http 500") for line in proc.stderr.splitlines())
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and shown in errors[0]


@pytest.mark.parametrize(("tty", "expected"), [(True, "a\\x1b[31mb\n"), (False, "a\x1b[31mb\n")])
def test_answer_text_is_escaped_on_a_terminal_and_exact_when_piped(
    tty: bool, expected: str
) -> None:
    import io

    from moakit.cli.ask import TerminalView, progress_console
    from moakit.events import RunFinished, TextDelta
    from moakit.result import Result

    class Out(io.StringIO):
        def isatty(self) -> bool:
            return tty

    out = Out()
    view = TerminalView(progress_console(quiet=True), out)
    view(TextDelta(text="a\x1b[31mb", run_id="r", ts=0.0))
    view(RunFinished(result=Result(stack="s"), run_id="r", ts=0.0))
    assert out.getvalue() == expected


def test_progress_lines_never_split_a_streaming_answer() -> None:
    """Staircase: proposers finish after the answer has begun. On a terminal both streams share
    the screen, so progress lines are held until the answer line has ended."""
    import io

    from rich.console import Console

    from moakit.cli.ask import TerminalView
    from moakit.events import MemberFinished, RunFinished, TextDelta
    from moakit.result import MemberOutput, Result

    screen = io.StringIO()  # stdout and stderr of one terminal
    view = TerminalView(Console(file=screen, width=200), screen)
    done = MemberOutput(layer=1, index=0, label="p#1", provider="f", model="m", output="x")
    view(TextDelta(text="The answer ", run_id="r", ts=0.0))
    view(MemberFinished(output=done, run_id="r", ts=0.0))
    view(TextDelta(text="is 72.", run_id="r", ts=0.0))
    view(RunFinished(result=Result(stack="s"), run_id="r", ts=0.0))
    lines = screen.getvalue().splitlines()
    assert lines[0] == "The answer is 72."
    assert any(line.startswith("  ✓ p#1") for line in lines[1:])


def test_json_shows_the_decisions_of_an_adaptive_stack(
    tmp_path: Path, backend: FakeBackend
) -> None:
    stack = write_stack(tmp_path, backend.base_url, ["p1", "p2", "p3"])
    stack.write_text(stack.read_text() + "[budget]\nmax_calls = 3\n")
    proc = moa("ask", "--json", "--config", str(stack), "hi")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    (decision,) = result["decisions"]
    assert decision["kind"] == "budget" and decision["skipped"] == ["p3"]
    assert decision["calls_saved"] == 1 and result["llm_calls"] == 3


def test_the_progress_shows_each_decision_and_what_it_skipped(
    tmp_path: Path, backend: FakeBackend
) -> None:
    stack = write_stack(tmp_path, backend.base_url, ["p1", "p2", "p3"])
    stack.write_text(stack.read_text() + "[budget]\nmax_calls = 3\n")
    proc = moa("ask", "--config", str(stack), "hi")
    assert proc.returncode == 0, proc.stderr
    (line,) = [ln for ln in proc.stderr.splitlines() if ln.startswith("budget: ")]
    assert "(skipped: p3)" in line
