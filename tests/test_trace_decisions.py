"""Adaptive decisions in the trace store: recorded per query, read back, shown by ``moa trace
show``, exported to OpenTelemetry, and a store from before them migrates forward."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from click.testing import CliRunner

from moakit import Stack, parse_config
from moakit.cli.main import cli
from moakit.testing.models import FunctionModel
from moakit.trace import TraceRecorder, TraceStore, traced_run
from moakit.trace.migrations import MIGRATIONS


def budget_stack() -> Stack:
    config = parse_config(
        {
            "name": "budgeted",
            "layers": [[{"model": "a"}, {"model": "b"}, {"model": "c"}]],
            "aggregator": {"model": "agg"},
            "budget": {"max_calls": 3},
        }
    )
    models = {n: FunctionModel(lambda r, n=n: f"{n} says hi", name=n) for n in "abc"}
    models["agg"] = FunctionModel(lambda r: "final", name="agg")
    return Stack(config, models=models)


async def record(store: TraceStore, run_id: str) -> None:
    async with budget_stack() as stack:
        recorder = TraceRecorder(store, stack=stack)
        await traced_run(stack, "hi", recorder, run_id=run_id)
    assert store.flush()


async def test_decisions_are_recorded_read_back_and_shown(tmp_path: Path) -> None:
    db = tmp_path / "t.db"
    with TraceStore(db) as store:
        await record(store, "run-budget")
        trace = store.get("run-budget")
    assert trace is not None
    (decision,) = trace.query.decisions
    assert decision["kind"] == "budget" and decision["skipped"] == ["c"]
    assert "max_calls 3" in decision["detail"]
    shown = CliRunner().invoke(
        cli, ["trace", "show", "run-budget", "--db", str(db)], env={"COLUMNS": "300"}
    )
    assert shown.exit_code == 0, shown.output
    assert "decision: budget after layer 1" in shown.output and "skipped c" in shown.output


async def test_a_store_from_before_decisions_migrates_forward(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    names = [name for name, _ in MIGRATIONS]
    assert names[-1] == "m005_decisions"
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("CREATE TABLE _moakit_migrations (name TEXT PRIMARY KEY, applied_at REAL)")
        for name, fn in MIGRATIONS[:-1]:
            fn(db)
            db.execute("INSERT INTO _moakit_migrations VALUES (?, 0)", (name,))
        db.execute(
            "INSERT INTO queries (id, stack_name, start_time, status, output)"
            " VALUES ('old-run', 's', 1.0, 'complete', 'an old answer')"
        )
    finally:
        db.close()
    with TraceStore(path) as store:
        await record(store, "new-run")
        old, new = store.get("old-run"), store.get("new-run")
    assert old is not None and old.query.decisions == []
    assert new is not None and new.query.decisions[0]["kind"] == "budget"
