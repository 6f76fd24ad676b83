"""The small things a new user trips over (issue 27, item 12): a truncated answer says so,
``moa chat`` survives Ctrl-C and knows /help, an embedded model without ``provider = "local"``
gets a hint, prices can be set once, ``traced_run`` takes a string."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from moakit import Stack, parse_config
from moakit.cli.main import cli
from moakit.config import EMBEDDED_MODELS
from moakit.errors import ConfigError
from moakit.models.local import KNOWN_MODELS
from moakit.server import create_app
from moakit.testing.fake_backend import Behavior, FakeBackend, Fault
from moakit.trace import TraceRecorder, TraceStore, traced_run
from trace_helpers import echo_stack


@pytest.fixture
def truncating() -> Iterator[FakeBackend]:
    with FakeBackend(
        models={"agg": Behavior(fault=Fault("truncated"), tokens=6)}, default=Behavior(tokens=4)
    ) as fb:
        yield fb


def stack_file(tmp_path: Path, base_url: str) -> Path:
    cfg = tmp_path / "s.toml"
    cfg.write_text(
        f'name = "s"\n[defaults]\nbase_url = "{base_url}"\nmax_tokens = 8\n'
        '[[layers]]\nmembers = [{model = "p1"}]\n[aggregator]\nmodel = "agg"\n'
    )
    return cfg


def test_moa_ask_says_when_the_answer_was_truncated(
    tmp_path: Path, truncating: FakeBackend
) -> None:
    result = CliRunner().invoke(
        cli, ["ask", "-c", str(stack_file(tmp_path, truncating.base_url)), "hi"]
    )
    assert result.exit_code == 0, result.output
    assert "answer truncated" in result.stderr and "max_tokens" in result.stderr
    assert "answer truncated" not in result.stdout  # the answer itself stays the answer


async def test_responses_reports_a_truncated_answer_as_incomplete(
    truncating: FakeBackend,
) -> None:
    cfg = parse_config(
        {
            "name": "s",
            "defaults": {"base_url": truncating.base_url, "max_tokens": 8},
            "layers": [[{"model": "p1"}]],
            "aggregator": {"model": "agg"},
        }
    )
    app = create_app({"s": cfg}, api_keys=[])
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as c:
        whole = (await c.post("/v1/responses", json={"model": "s", "input": "hi"})).json()
        streamed = await c.post("/v1/responses", json={"model": "s", "input": "hi", "stream": True})
    assert whole["status"] == "incomplete"
    assert whole["incomplete_details"] == {"reason": "max_output_tokens"}
    assert whole["output"][0]["status"] == "incomplete" and whole["output"][0]["content"]
    events = [
        json.loads(line[6:]) for line in streamed.text.splitlines() if line.startswith("data: ")
    ]
    assert events[-1]["type"] == "response.incomplete"
    assert events[-1]["response"]["incomplete_details"] == {"reason": "max_output_tokens"}
    assert "response.completed" not in [e["type"] for e in events]


def test_moa_chat_ctrl_c_stops_the_answer_not_the_chat(tmp_path: Path) -> None:
    # The aggregator never answers: only Ctrl-C ends the first turn.
    with FakeBackend(
        models={"agg": Behavior(fault=Fault("hang"))}, default=Behavior(tokens=4)
    ) as fb:
        env = {**os.environ, "MOAKIT_HOME": str(tmp_path / "home"), "COLUMNS": "200"}
        moa = str(Path(sys.executable).with_name("moa"))
        # The chat starts with SIGINT at its default, as in a terminal: a suite run as a
        # background job (`make test &`) ignores SIGINT, and an ignored signal stays ignored
        # across exec, so a child would never see the Ctrl-C this test sends.
        reset = "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
        reset += "os.execv(sys.argv[1], sys.argv[1:])"
        proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                reset,
                moa,
                "chat",
                "-c",
                str(stack_file(tmp_path, fb.base_url)),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        assert proc.stdin is not None
        proc.stdin.write("why?\n")
        proc.stdin.flush()
        deadline = time.monotonic() + 20
        while not any(b["model"] == "agg" for b in fb.stats.received):
            assert time.monotonic() < deadline and proc.poll() is None, "no answer started"
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        time.sleep(0.5)
        assert proc.poll() is None, "Ctrl-C ended the chat"
        out, err = proc.communicate("/help\n/exit\n", timeout=20)
    assert proc.returncode == 0, err
    assert "answer stopped" in err
    assert "/clear" in out and "Ctrl-C" in out  # /help is a command, not a question
    assert sum(1 for b in fb.stats.received if b["model"] == "p1") == 1  # /help was not asked


def test_an_embedded_model_without_provider_local_gets_a_hint() -> None:
    with pytest.raises(ConfigError, match='add provider = "local"'):
        parse_config(
            {
                "layers": [[{"model": "smollm2-135m"}]],
                "aggregator": {"model": "smollm2-135m", "provider": "local"},
            }
        )
    with pytest.raises(ConfigError, match=r"aggregator: 'weights\.gguf' is an embedded model"):
        parse_config(
            {
                "layers": [[{"model": "x", "provider": "local"}]],
                "aggregator": {"model": "weights.gguf"},
            }
        )
    # Said once in [defaults], or per member: fine.
    parse_config(
        {
            "defaults": {"provider": "local"},
            "layers": [[{"model": "smollm2-135m"}]],
            "aggregator": {"model": "smollm2-135m"},
        }
    )
    assert set(EMBEDDED_MODELS) == set(KNOWN_MODELS)  # the hint knows every packaged model


async def test_prices_can_be_set_once_in_defaults() -> None:
    with FakeBackend(default=Behavior(tokens=4)) as fb:
        cfg = parse_config(
            {
                "defaults": {
                    "base_url": fb.base_url,
                    "price_in_per_mtok": 1.0,
                    "price_out_per_mtok": 2.0,
                },
                "layers": [[{"model": "p1"}, {"model": "p2"}]],
                "aggregator": {"model": "agg", "price_out_per_mtok": 4.0},
            }
        )
        async with Stack(cfg) as stack:
            result = await stack.run([{"role": "user", "content": "hi"}])
    assert [m.price_in_per_mtok for m in cfg.layer_members(0)] == [1.0, 1.0]
    assert cfg.aggregators()[0].price_out_per_mtok == 4.0
    assert result.cost_usd is not None and result.cost_usd > 0


async def test_traced_run_takes_a_question_as_a_string(tmp_path: Path) -> None:
    stack, _ = echo_stack()
    with TraceStore(tmp_path / "t.db") as store:
        async with stack:
            result = await traced_run(
                stack, "Why is the sky blue?", TraceRecorder(store, stack=stack)
            )
        assert store.flush()
        [query] = store.list_queries()
    assert result.final == "agg: Why is the sky blue?"
    assert query.input == [{"role": "user", "content": "Why is the sky blue?"}]
