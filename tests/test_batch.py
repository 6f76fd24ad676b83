"""``moa batch`` on the local executor, against the fault backend over real HTTP."""

from __future__ import annotations

import json
from pathlib import Path

import openai.types
import openai.types.chat
import pytest
from click.testing import CliRunner

from batch_helpers import fake_stack, normalized, read_lines, write_input
from moakit.batch import BatchProgress, run_batch
from moakit.cli.main import cli
from moakit.errors import ConfigError
from moakit.executors import LocalExecutor
from moakit.testing.fake_backend import Behavior, FakeBackend, Fault, Latency
from moakit.trace import open_trace_store


@pytest.fixture
def backend() -> FakeBackend:
    with FakeBackend() as fb:
        yield fb


async def test_output_is_openai_batch_format_one_line_per_input_line(
    backend: FakeBackend, tmp_path: Path
) -> None:
    src = write_input(tmp_path / "in.jsonl", 3)
    with src.open("a") as fh:
        fh.write(json.dumps({"prompt": "plain"}) + "\n")
        fh.write(
            json.dumps(
                {
                    "custom_id": "m",
                    "messages": [{"role": "user", "content": "hi"}],
                    "temperature": 0.1,
                }
            )
            + "\n"
        )
        fh.write("{not json\n")
        fh.write(json.dumps({"prompt": "x", "logprobs": True}) + "\n")
        fh.write(json.dumps({"prompt": "x", "model": "no-such-stack"}) + "\n")
        fh.write(
            json.dumps(
                {
                    "custom_id": "u",
                    "method": "POST",
                    "url": "/v1/embeddings",
                    "body": {"model": "fake", "input": "x"},
                }
            )
            + "\n"
        )
    out = tmp_path / "out.jsonl"
    stack = fake_stack(backend.base_url)
    summary = await run_batch(src, out, default_model="fake", configs={"fake": stack})
    rows = read_lines(out)
    assert [r["custom_id"] for r in rows] == [
        "q0",
        "q1",
        "q2",
        "line-4",
        "m",
        "line-6",
        "line-7",
        "line-8",
        "u",
    ]
    for row in rows[:5]:
        assert row["error"] is None and row["response"]["status_code"] == 200
        completion = openai.types.chat.ChatCompletion.model_validate(row["response"]["body"])
        assert completion.choices[0].message.content.startswith("agg saw ")
        assert completion.system_fingerprint and completion.system_fingerprint.startswith("moakit")
        assert row["response"]["request_id"] == completion.id
    errors = {r["custom_id"]: r["response"] for r in rows[5:]}
    assert {k: v["status_code"] for k, v in errors.items()} == {
        "line-6": 400,
        "line-7": 400,
        "line-8": 404,
        "u": 400,
    }
    assert errors["line-7"]["body"]["error"]["param"] == "body.logprobs"
    assert errors["line-8"]["body"]["error"]["code"] == "model_not_found"
    assert summary.progress.errors == 4 and summary.complete
    # The caller's temperature reached the aggregator, as on the server.
    agg_bodies = [b for b in backend.stats.received if b["model"] == "agg"]
    assert any(b.get("temperature") == 0.1 for b in agg_bodies)
    assert summary.progress.cost_usd > 0


async def test_failures_are_error_lines_never_dropped(tmp_path: Path) -> None:
    with FakeBackend(default=Behavior(fault=Fault("http_500"))) as fb:
        src = write_input(tmp_path / "in.jsonl", 4)
        out = tmp_path / "out.jsonl"
        await run_batch(src, out, default_model="fake", configs={"fake": fake_stack(fb.base_url)})
    rows = read_lines(out)
    assert [r["custom_id"] for r in rows] == ["q0", "q1", "q2", "q3"]
    for row in rows:
        assert row["response"]["status_code"] == 502
        assert row["response"]["body"]["error"]["code"] == "layer_failed"


async def test_rerun_skips_finished_and_retries_errors(
    backend: FakeBackend, tmp_path: Path
) -> None:
    stack = fake_stack(backend.base_url)
    src = write_input(tmp_path / "in.jsonl", 6)
    out = tmp_path / "out.jsonl"
    await run_batch(src, out, default_model="fake", configs={"fake": stack})
    first = read_lines(out)
    # An earlier run that crashed: q4 failed, q5 never finished (its line cut mid-write).
    lines = out.read_text().splitlines(keepends=True)
    failed = dict(first[4], response={"status_code": 502, "request_id": "", "body": {}})
    out.write_text("".join(lines[:4]) + json.dumps(failed) + "\n" + lines[5][:40])
    backend.reset_stats()
    summary = await run_batch(src, out, default_model="fake", configs={"fake": stack})
    assert summary.progress.resumed == 4 and summary.progress.done == 2
    assert backend.stats.requests == 2 * 3  # two items, three calls each
    rows = read_lines(out)
    assert [r["custom_id"] for r in rows] == [f"q{i}" for i in range(6)]
    assert normalized(rows) == normalized(first)


async def test_rerun_refuses_a_changed_stack(backend: FakeBackend, tmp_path: Path) -> None:
    src = write_input(tmp_path / "in.jsonl", 2)
    out = tmp_path / "out.jsonl"
    await run_batch(src, out, default_model="fake", configs={"fake": fake_stack(backend.base_url)})
    changed = fake_stack(backend.base_url, deadline_s=77)
    with pytest.raises(ConfigError, match="another configuration"):
        await run_batch(src, out, default_model="fake", configs={"fake": changed})
    summary = await run_batch(
        src, out, default_model="fake", configs={"fake": changed}, overwrite=True
    )
    assert summary.progress.done == 2


async def test_cost_cap_stops_cleanly_and_a_rerun_continues(tmp_path: Path) -> None:
    slow = Behavior(latency=Latency(ttft_s=0.05))
    with FakeBackend(default=slow) as fb:
        stack = fake_stack(fb.base_url)
        src = write_input(tmp_path / "in.jsonl", 12)
        out = tmp_path / "out.jsonl"
        summary = await run_batch(
            src,
            out,
            default_model="fake",
            configs={"fake": stack},
            executor=LocalExecutor(2),
            max_cost_usd=0.0005,
        )
        progress = summary.progress
        assert progress.stopped and "cost cap" in progress.stopped
        assert 0 < progress.done < 12 and summary.not_started == 12 - progress.done
        # Nothing started after the cap: every request sent belongs to a written line.
        assert fb.stats.requests == 3 * progress.done
        assert all(r["response"]["status_code"] == 200 for r in read_lines(out))
        rest = await run_batch(src, out, default_model="fake", configs={"fake": stack})
    assert rest.complete and rest.progress.resumed == progress.done
    assert len(read_lines(out)) == 12


async def test_endpoint_limit_caps_calls_in_flight(tmp_path: Path) -> None:
    with FakeBackend(default=Behavior(latency=Latency(ttft_s=0.05))) as fb:
        stack = fake_stack(fb.base_url)
        src = write_input(tmp_path / "in.jsonl", 8)
        executor = LocalExecutor(8, limits={f"openai:{fb.base_url}": 2})
        await run_batch(
            src,
            tmp_path / "o.jsonl",
            default_model="fake",
            configs={"fake": stack},
            executor=executor,
        )
        assert fb.stats.requests == 24
        assert fb.stats.max_in_flight == 2


async def test_shared_cache_answers_identical_requests_once(tmp_path: Path) -> None:
    with FakeBackend() as fb:
        stack = fake_stack(fb.base_url)
        src = tmp_path / "in.jsonl"
        src.write_text("".join(json.dumps({"prompt": "same question"}) + "\n" for _ in range(5)))
        executor = LocalExecutor(5, cache=tmp_path / "cache.db")
        await run_batch(
            src,
            tmp_path / "o.jsonl",
            default_model="fake",
            configs={"fake": stack},
            executor=executor,
        )
        assert fb.stats.requests == 3
    answers = {
        r["response"]["body"]["choices"][0]["message"]["content"]
        for r in read_lines(tmp_path / "o.jsonl")
    }
    assert len(answers) == 1


async def test_traces_are_optional_and_recorded_when_asked(
    backend: FakeBackend, tmp_path: Path
) -> None:
    src = write_input(tmp_path / "in.jsonl", 3)
    db = tmp_path / "traces.db"
    configs = {"fake": fake_stack(backend.base_url)}
    await run_batch(src, tmp_path / "a.jsonl", default_model="fake", configs=configs)
    assert not db.exists()
    await run_batch(
        src, tmp_path / "b.jsonl", default_model="fake", configs=configs, trace_db=str(db)
    )
    ids = {r["response"]["request_id"] for r in read_lines(tmp_path / "b.jsonl")}
    with open_trace_store(db) as store:
        listed = store.list_queries()
    assert {q.id for q in listed} == ids
    assert {q.source for q in listed} == {"batch"} and {q.status for q in listed} == {"complete"}


def test_cli_progress_lines_when_not_a_terminal(tmp_path: Path) -> None:
    slow = Behavior(latency=Latency(ttft_s=0.15))
    with FakeBackend(default=slow) as fb:
        config = tmp_path / "fake.toml"
        config.write_text(
            f'name = "fake"\n[defaults]\nprovider = "openai"\nbase_url = "{fb.base_url}"\n'
            'retries = 0\n[[layers]]\nmembers = [{ model = "p1" }]\n[aggregator]\nmodel = "agg"\n'
        )
        src = write_input(tmp_path / "in.jsonl", 6)
        out = tmp_path / "out.jsonl"
        result = CliRunner().invoke(
            cli,
            [
                "batch",
                str(src),
                "-o",
                str(out),
                "-c",
                str(config),
                "--concurrency",
                "1",
                "--progress-every",
                "0.2",
            ],
        )
    assert result.exit_code == 0, result.output
    progress = [line for line in result.stderr.splitlines() if line.startswith("batch ")]
    assert len(progress) >= 3, result.stderr
    assert "ETA" in progress[-1] and "cost $" in progress[-1] and "6/6" in progress[-1]
    assert len(read_lines(out)) == 6


def test_cli_cost_cap_exit_status(tmp_path: Path) -> None:
    with FakeBackend() as fb:
        config = tmp_path / "fake.toml"
        config.write_text(
            f'name = "fake"\n[defaults]\nprovider = "openai"\nbase_url = "{fb.base_url}"\n'
            '[[layers]]\nmembers = [{ model = "p1", price_in_per_mtok = 1.0, '
            "price_out_per_mtok = 1.0 }]\n"
            '[aggregator]\nmodel = "agg"\nprice_in_per_mtok = 1.0\nprice_out_per_mtok = 1.0\n'
        )
        src = write_input(tmp_path / "in.jsonl", 5)
        result = CliRunner().invoke(
            cli,
            [
                "batch",
                str(src),
                "-o",
                str(tmp_path / "o.jsonl"),
                "-c",
                str(config),
                "--concurrency",
                "1",
                "--max-cost",
                "0.00001",
            ],
        )
    assert result.exit_code == 4, result.output
    assert "run the same command again" in result.stderr


def test_progress_line_has_eta_and_cost() -> None:
    progress = BatchProgress(total=10, done=2, cost_usd=0.5, unpriced_calls=3)
    progress.started -= 4.0
    line = progress.line()
    assert (
        "batch 2/10" in line and "ETA 16s" in line and "$0.5000" in line and "+3 unpriced" in line
    )


def test_duplicate_custom_ids_refuse_the_file(tmp_path: Path) -> None:
    src = tmp_path / "in.jsonl"
    src.write_text('{"custom_id": "a", "prompt": "x"}\n{"custom_id": "a", "prompt": "y"}\n')
    from moakit.batch.formats import read_input

    with pytest.raises(ConfigError, match="lines 1 and 2"):
        read_input(src, "local")


def test_batch_error_fields_match_openai() -> None:
    from moakit.batch.formats import error_line

    row = error_line("x", "worker_failed", "lost")
    assert openai.types.BatchError.model_validate(row["error"]).code == "worker_failed"


async def test_the_shared_cache_never_serves_an_answer_without_its_tool_calls() -> None:
    from moakit.executors.services import LocalCache
    from moakit.executors.wrappers import SharedCachedModel
    from moakit.messages import ChatRequest, Completion, ToolCall, ToolSpec
    from moakit.models.base import collect
    from moakit.testing.models import FunctionModel

    call = ToolCall("c1", "get_weather", '{"city": "Paris"}')
    inner = FunctionModel(lambda r: Completion(text="Let me look.", tool_calls=(call,)), tools=True)
    cached = SharedCachedModel(inner, LocalCache(), {"model": "m"})
    request = ChatRequest(
        messages=[{"role": "user", "content": "hi"}], tools=(ToolSpec("get_weather"),)
    )
    first = await collect(cached.stream(request))
    second = await collect(cached.stream(request))
    assert first.tool_calls == second.tool_calls == (call,)
    assert second.text == "Let me look." and second.finish_reason == first.finish_reason
    assert len(inner.requests) == 1  # the second was the stored answer, calls and all
