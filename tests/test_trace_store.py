from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
from pathlib import Path

import pytest

from moakit import Stack
from moakit.errors import AggregatorFailed
from moakit.messages import to_openai
from moakit.models.base import ChatRequest
from moakit.trace import TraceRecorder, TraceStore, content_hash, default_trace_path, traced_run
from moakit.trace.adapter import traced_events
from trace_helpers import dump_all, echo_stack, failing, fixed, raw_bytes, two_layer_config

CONV = [{"role": "user", "content": "What is MoA?"}]


@pytest.fixture
def store(tmp_path: Path) -> TraceStore:
    s = TraceStore(tmp_path / "traces.db")
    yield s  # type: ignore[misc]
    s.close()


async def run_traced(store: TraceStore, stack: Stack, conv: list[dict[str, str]] = CONV) -> str:
    recorder = TraceRecorder(store, stack=stack, source="test")
    result = await traced_run(stack, conv, recorder, run_id="run-1")
    assert store.flush()
    assert result.final
    return "run-1"


async def test_a_run_is_recorded_with_exact_inputs_references_and_totals(
    store: TraceStore,
) -> None:
    stack, models = echo_stack()
    async with stack:
        recorder = TraceRecorder(store, stack=stack, source="test")
        result = await traced_run(stack, ChatRequest(messages=CONV, max_tokens=50), recorder)
    assert store.flush()
    [row] = store.list_queries()
    record = store.get(row.id)
    assert record is not None
    q = record.query
    assert (q.status, q.stack_name, q.source) == ("complete", "trace-test", "test")
    assert q.output == result.final == "agg: What is MoA?"
    assert (q.prompt_tokens, q.completion_tokens) == (
        result.usage.prompt_tokens,
        result.usage.completion_tokens,
    )
    assert q.input == CONV and q.input_hash == content_hash(CONV)
    assert q.llm_calls == 4 and q.serial_rounds == 3
    assert q.stack_config is not None and q.stack_config["name"] == "trace-test"
    calls = {(c.layer, c.index): c for c in record.calls}
    assert sorted(calls) == [(1, 0), (1, 1), (2, 0), (3, 0)]
    # What each call was sent is exactly what its model received.
    for (layer, index), model in {(1, 0): "a", (1, 1): "b", (2, 0): "c", (3, 0): "agg"}.items():
        assert calls[(layer, index)].input == to_openai(models[model].requests[0].messages)
        assert calls[(layer, index)].model_name == model
    layer2 = calls[(2, 0)]
    assert [(r.label, r.text) for r in layer2.references] == [
        ("a", "a: What is MoA?"),
        ("b", "b: What is MoA?"),
    ]
    agg = calls[(3, 0)]
    assert agg.role == "aggregator"
    assert [r.text for r in agg.references] == ["c: What is MoA?"]
    # The request's max_tokens reaches the final aggregator only (and the record says so).
    assert agg.model_parameters["max_tokens"] == 50 == models["agg"].requests[0].max_tokens
    assert "max_tokens" not in calls[(1, 0)].model_parameters
    # The double has no plain request of its own: read as a stream, its first token is timed.
    assert agg.ttft_s is not None and agg.ttft_s >= 0
    assert all(c.level == "DEFAULT" and c.status_message is None for c in record.calls)


async def test_failed_member_and_failed_query_are_recorded(store: TraceStore) -> None:
    stack, _ = echo_stack(b=failing("b"), agg=failing("agg", "aggregator down"))
    async with stack:
        recorder = TraceRecorder(store, stack=stack)
        with pytest.raises(AggregatorFailed):
            await traced_run(stack, CONV, recorder, run_id="failed-run")
    assert store.flush()
    record = store.get("failed-run")
    assert record is not None
    assert record.query.status == "failed"
    assert "aggregator down" in (record.query.status_message or "")
    calls = {(c.layer, c.index): c for c in record.calls}
    bad = calls[(1, 1)]
    assert bad.level == "ERROR" and "upstream exploded" in str(bad.status_message)
    assert bad.output is None and bad.attempts[-1].error
    assert calls[(1, 0)].ok
    assert calls[(3, 0)].level == "ERROR" and calls[(3, 0)].role == "aggregator"
    # Layer 2 was shown only the answer that came.
    assert [r.label for r in calls[(2, 0)].references] == ["a"]


async def test_store_prompts_false_keeps_only_hashes(tmp_path: Path) -> None:
    marker = "ZEBRA-PROMPT-7731"
    conv = [{"role": "user", "content": f"secret plan {marker}"}]
    paths = {}
    for store_prompts in (True, False):
        path = tmp_path / f"prompts-{store_prompts}.db"
        with TraceStore(path, store_prompts=store_prompts) as store:
            stack, _ = echo_stack(
                a=fixed("a", "alpha answer"),
                b=fixed("b", "beta answer"),
                c=fixed("c", "gamma answer"),
                agg=fixed("agg", "final answer"),
            )
            async with stack:
                await run_traced(store, stack, conv)
            record = store.get("run-1")
        assert record is not None
        paths[store_prompts] = (path, record)
    # With prompts stored the marker is there (so the check below can see it)...
    path, record = paths[True]
    assert any(marker in v for v in dump_all(path))
    # ...without, no column holds it; hashes identify what was sent.
    path, record = paths[False]
    assert not any(marker in v for v in dump_all(path))
    assert marker.encode() not in raw_bytes(path)
    assert record.query.input is None and record.query.input_hash == content_hash(conv)
    for call in record.calls:
        assert call.input is None and call.input_hash and call.input_hash.startswith("sha256:")
        assert all(r.text is None and r.text_hash for r in call.references)
        assert call.output  # outputs are kept
    assert record.query.output == "final answer"


async def test_no_secret_in_any_column(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    canary = "sk-canary-5f3b9e1d7a"
    team = "tk-team-canary-0042"
    monkeypatch.setenv("OPENAI_API_KEY", canary)
    # A variable named only by the stack's api_key_env (not key-like by its name).
    monkeypatch.setenv("ACME_LLM_CRED_VAR", team)
    config = two_layer_config(defaults={"api_key_env": "ACME_LLM_CRED_VAR"})
    models = {
        # A model that echoes the key it was somehow shown, an error quoting a header...
        "a": fixed("a", f"my key is {canary} and {team}"),
        "b": failing("b", f"401 from upstream: Authorization: Bearer {canary}"),
        "c": fixed("c", f"api_key={team}"),
        "agg": fixed("agg", f"final, with {canary}"),
    }
    path = tmp_path / "secrets.db"
    with TraceStore(path) as store:
        async with Stack(config, models=models) as stack:
            # ...and a user who pastes a key into the question.
            await run_traced(store, stack, [{"role": "user", "content": f"is {canary} valid?"}])
        record = store.get("run-1")
    assert record is not None and record.query.output == "final, with ***"
    values = dump_all(path)
    assert values  # the dump saw the rows
    for secret in (canary, team):
        assert not any(secret in v for v in values), secret
        assert secret.encode() not in raw_bytes(path)


async def test_recording_never_blocks_the_event_loop(store: TraceStore) -> None:
    """With the writer stuck (a slow disk, another process holding the lock), runs still finish:
    the loop only enqueues."""
    gate = threading.Event()
    writer = store._writer
    original = writer._write

    def stuck(db: sqlite3.Connection, ops: list) -> None:  # type: ignore[type-arg]
        gate.wait(10)
        original(db, ops)

    writer._write = stuck  # type: ignore[method-assign]
    stack, _ = echo_stack()
    async with stack:
        recorder = TraceRecorder(store, stack=stack)
        results = await asyncio.wait_for(
            asyncio.gather(*(traced_run(stack, CONV, recorder) for _ in range(5))), 5
        )
    assert len(results) == 5
    assert store.list_queries() == []  # nothing committed yet: the writer is still stuck
    gate.set()
    assert store.flush()
    assert len(store.list_queries()) == 5


async def test_cancelled_consumer_marks_the_query_cancelled(store: TraceStore) -> None:
    stack, _ = echo_stack(agg=fixed("agg", "slow", delay_s=30))
    async with stack:
        recorder = TraceRecorder(store, stack=stack)
        events = traced_events(stack, CONV, recorder, run_id="cut")
        async for event in events:
            if type(event).__name__ == "AggregatorStarted":
                break
        await events.aclose()  # type: ignore[attr-defined]
    assert store.flush()
    record = store.get("cut")
    assert record is not None
    assert record.query.status == "cancelled"
    assert len(record.calls) == 3  # the proposers that finished


def test_default_path_honours_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MOAKIT_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MOAKIT_TRACE_DB", raising=False)
    assert default_trace_path() == tmp_path / "home" / "traces.db"
    monkeypatch.setenv("MOAKIT_TRACE_DB", str(tmp_path / "elsewhere.db"))
    assert default_trace_path() == tmp_path / "elsewhere.db"
    with TraceStore() as store:
        assert store.path == tmp_path / "elsewhere.db"
    mode = sqlite3.connect(tmp_path / "elsewhere.db").execute("PRAGMA journal_mode").fetchone()
    assert mode[0] == "wal"


async def test_prune_and_stats(store: TraceStore) -> None:
    stack, _ = echo_stack()
    async with stack:
        recorder = TraceRecorder(store, stack=stack)
        for i in range(3):
            await traced_run(stack, CONV, recorder, run_id=f"r{i}")
    assert store.flush()
    db = sqlite3.connect(store.path)
    db.execute("UPDATE queries SET start_time = start_time - 40 * 86400 WHERE id IN ('r0', 'r1')")
    db.commit()
    db.close()
    before = store.stats()
    assert (before.queries, before.calls, before.stack_configs) == (3, 12, 1)
    assert before.by_status == {"complete": 3} and before.file_bytes > 0
    assert store.prune(30 * 86400) == 2
    after = store.stats()
    assert (after.queries, after.calls) == (1, 4)
    assert store.get("r0") is None and store.get("r2") is not None


def test_resolve_prefix(store: TraceStore) -> None:
    from moakit.trace.records import QueryRecord

    for qid in ("abcd1111", "abcd2222", "ffff0000"):
        store.query_started(QueryRecord(id=qid, stack_name="s", config_hash=None, start_time=1.0))
    assert store.flush()
    assert store.resolve("ffff") == "ffff0000"
    assert store.resolve("abcd") is None  # ambiguous
    assert store.resolve("abcd1") == "abcd1111"
    assert store.resolve("ab%") is None  # LIKE wildcards are literal
    assert json.dumps(store.get("ffff0000").to_json())  # type: ignore[union-attr]


async def test_a_refused_row_costs_only_itself(
    store: TraceStore, caplog: pytest.LogCaptureFixture
) -> None:
    from moakit.trace.records import CallRecord

    # A call whose query row does not exist breaks the foreign key: SQLite refuses that row.
    orphan = CallRecord(
        query_id="no-such-query",
        layer=1,
        index=0,
        role="proposer",
        label="x",
        provider="openai",
        model_name="x",
    )
    writer = store._writer
    start = writer._ensure_started
    writer._ensure_started = lambda: None  # type: ignore[method-assign]
    stack, _ = echo_stack()
    async with stack:
        recorder = TraceRecorder(store, stack=stack)
        await traced_run(stack, CONV, recorder, run_id="before")
        store.call_finished(orphan)
        await traced_run(stack, CONV, recorder, run_id="after")
    # Everything is queued before the writer starts, so it all goes in one batch.
    writer._ensure_started = start  # type: ignore[method-assign]
    start()
    assert store.flush()
    assert store.dropped == 1 and "rows refused" in caplog.text
    for run_id in ("before", "after"):
        record = store.get(run_id)
        assert record is not None and record.query.status == "complete"
        assert len(record.calls) == 4
