"""The store under concurrent writers, a process killed mid-query, and an older schema."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any, cast

from moakit.trace import TraceRecorder, TraceStore, traced_run
from moakit.trace.migrations import MIGRATIONS
from trace_helpers import echo_stack

CONV = [{"role": "user", "content": "q"}]

# A child process: `N` traced runs of a 3-proposer stack over test doubles, on the store at
# argv[1]; argv[2] is a file whose existence means "go" (so two children start together).
WRITER_SCRIPT = textwrap.dedent(
    """
    import asyncio, os, sys, time
    from moakit import Stack, parse_config
    from moakit.testing.models import echo_model
    from moakit.trace import TraceRecorder, TraceStore, traced_run

    path, go, tag, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    config = parse_config({"name": "proc", "layers": [[{"model": "a"}, {"model": "b"},
                           {"model": "c"}]], "aggregator": {"model": "agg"}})
    models = {m: echo_model(m) for m in ("a", "b", "c", "agg")}

    async def main():
        store = TraceStore(path)
        async with Stack(config, models=models) as stack:
            recorder = TraceRecorder(store, stack=stack)
            while not os.path.exists(go):
                time.sleep(0.005)
            for i in range(n):
                await traced_run(stack, [{"role": "user", "content": f"{tag} {i}"}], recorder,
                                 run_id=f"{tag}-{i}")
        assert store.flush(30)
        store.close()

    asyncio.run(main())
    """
)

# A child that records a run whose aggregator never answers, prints READY, and waits to die.
CRASH_SCRIPT = textwrap.dedent(
    """
    import asyncio, sys
    from moakit import Stack, parse_config
    from moakit.testing.models import FunctionModel, echo_model
    from moakit.trace import TraceRecorder, TraceStore, traced_run

    config = parse_config({"name": "crashy", "layers": [[{"model": "a"}, {"model": "b"}]],
                           "aggregator": {"model": "agg"}})
    models = {"a": echo_model("a"), "b": echo_model("b"),
              "agg": FunctionModel(lambda r: "never", name="agg", delay_s=3600)}

    async def main():
        store = TraceStore(sys.argv[1])
        async with Stack(config, models=models) as stack:
            await traced_run(stack, [{"role": "user", "content": "q"}],
                             TraceRecorder(store, stack=stack), run_id="doomed")

    asyncio.run(main())
    """
)


def _integrity(path: Path) -> str:
    db = sqlite3.connect(path)
    try:
        return str(db.execute("PRAGMA integrity_check").fetchone()[0])
    finally:
        db.close()


def test_concurrent_runs_from_threads_and_two_store_instances(tmp_path: Path) -> None:
    path = tmp_path / "threads.db"
    stores = [TraceStore(path), TraceStore(path)]  # two writer threads, two connections
    per_thread, threads = 15, 6

    def worker(t: int) -> None:
        store = stores[t % 2]

        async def go() -> None:
            stack, _ = echo_stack()
            async with stack:
                recorder = TraceRecorder(store, stack=stack)
                await asyncio.gather(
                    *(
                        traced_run(stack, CONV, recorder, run_id=f"t{t}-{i}")
                        for i in range(per_thread)
                    )
                )

        asyncio.run(go())

    pool = [threading.Thread(target=worker, args=(t,)) for t in range(threads)]
    for th in pool:
        th.start()
    for th in pool:
        th.join(60)
    for store in stores:
        assert store.flush(30)
    reader = stores[0]
    stats = reader.stats()
    assert stats.queries == per_thread * threads
    assert stats.calls == per_thread * threads * 4
    assert stats.by_status == {"complete": per_thread * threads}
    record = reader.get("t5-14")
    assert record is not None and len(record.calls) == 4
    assert _integrity(path) == "ok"
    for store in stores:
        store.close()


def test_two_processes_write_one_file(tmp_path: Path) -> None:
    path, go, n = tmp_path / "procs.db", tmp_path / "go", 40
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER_SCRIPT, str(path), str(go), tag, str(n)], env=env
        )
        for tag in ("p1", "p2")
    ]
    time.sleep(0.5)  # both open (and migrate) the file, then start writing together
    go.touch()
    for p in procs:
        assert p.wait(120) == 0
    with TraceStore(path) as store:
        stats = store.stats()
        assert stats.queries == 2 * n and stats.calls == 2 * n * 4
        assert stats.by_status == {"complete": 2 * n}
        for tag in ("p1", "p2"):
            record = store.get(f"{tag}-{n - 1}")
            assert record is not None and record.query.input == [
                {"role": "user", "content": f"{tag} {n - 1}"}
            ]
    assert _integrity(path) == "ok"
    db = sqlite3.connect(path)
    names = [r[0] for r in db.execute("SELECT name FROM _moakit_migrations")]
    db.close()
    assert names == [name for name, _ in MIGRATIONS]  # each applied once despite two openers


class _RefusesWal:
    """A connection whose switch to WAL is refused, as SQLite refuses the second of two
    processes switching a fresh file at the same moment (no busy wait: it could deadlock)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def execute(self, sql: str, *args: Any) -> Any:
        if sql == "PRAGMA journal_mode=WAL":
            raise sqlite3.OperationalError("database is locked")
        return self._db.execute(sql, *args)

    def close(self) -> None:
        self._db.close()


def test_opening_a_file_another_process_is_switching_to_wal_waits_and_opens(
    tmp_path: Path,
) -> None:
    connects = 0

    class Contended(TraceStore):
        def _connect(self) -> sqlite3.Connection:
            nonlocal connects
            connects += 1
            db = super()._connect()
            return cast(sqlite3.Connection, _RefusesWal(db)) if connects == 1 else db

    with Contended(tmp_path / "contended.db") as store:
        assert store.stats().queries == 0
    db = sqlite3.connect(tmp_path / "contended.db")
    names = [r[0] for r in db.execute("SELECT name FROM _moakit_migrations")]
    mode = db.execute("PRAGMA journal_mode").fetchone()[0]
    db.close()
    assert names == [name for name, _ in MIGRATIONS] and mode == "wal"


def test_killed_mid_query_keeps_finished_calls_and_marks_incomplete(tmp_path: Path) -> None:
    path = tmp_path / "crash.db"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "-c", CRASH_SCRIPT, str(path)], env=env)
    try:
        deadline = time.monotonic() + 60
        calls = 0
        while time.monotonic() < deadline and calls < 2:
            time.sleep(0.05)
            if path.exists():
                try:
                    db = sqlite3.connect(path)
                    calls = db.execute("SELECT COUNT(*) FROM calls").fetchone()[0]
                    db.close()
                except sqlite3.OperationalError:
                    calls = 0  # schema not created yet
        assert calls == 2, "the proposers' calls were never written while the query ran"
        assert proc.poll() is None  # still stuck in the aggregator
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    with TraceStore(path) as store:
        record = store.get("doomed")
    assert record is not None
    assert record.query.status == "incomplete" and record.query.end_time is None
    assert sorted((c.layer, c.index, c.output) for c in record.calls) == [
        (1, 0, "a: q"),
        (1, 1, "b: q"),
    ]


# The schema exactly as the first release (m001_initial) wrote it, typed out by hand rather
# than taken from the code, so a later edit of m001 cannot hide a broken upgrade.
V1_SCHEMA = """
CREATE TABLE _moakit_migrations (name TEXT PRIMARY KEY, applied_at REAL);
INSERT INTO _moakit_migrations VALUES ('m001_initial', 1700000000.0);
CREATE TABLE stack_configs (config_hash TEXT PRIMARY KEY, name TEXT NOT NULL,
    config TEXT NOT NULL, first_seen REAL NOT NULL);
CREATE TABLE queries (id TEXT PRIMARY KEY, stack_name TEXT NOT NULL, config_hash TEXT,
    start_time REAL NOT NULL, end_time REAL, input TEXT, input_hash TEXT, status TEXT NOT NULL,
    output TEXT, latency_s REAL, prompt_tokens INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0, cost_usd REAL,
    llm_calls INTEGER NOT NULL DEFAULT 0, serial_rounds INTEGER NOT NULL DEFAULT 0,
    status_message TEXT);
CREATE TABLE calls (query_id TEXT NOT NULL REFERENCES queries(id) ON DELETE CASCADE,
    layer INTEGER NOT NULL, idx INTEGER NOT NULL, role TEXT NOT NULL, label TEXT NOT NULL,
    provider TEXT NOT NULL, model_name TEXT NOT NULL, model_parameters TEXT NOT NULL DEFAULT '{}',
    input TEXT, input_hash TEXT, references_shown TEXT NOT NULL DEFAULT '[]', output TEXT,
    finish_reason TEXT, truncated INTEGER NOT NULL DEFAULT 0,
    cancelled INTEGER NOT NULL DEFAULT 0, prompt_tokens INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0, cost_usd REAL, start_time REAL NOT NULL,
    end_time REAL NOT NULL, latency_s REAL NOT NULL, attempts TEXT NOT NULL DEFAULT '[]',
    level TEXT NOT NULL DEFAULT 'DEFAULT', status_message TEXT,
    PRIMARY KEY (query_id, layer, idx));
INSERT INTO stack_configs VALUES ('sha256:old', 'old-stack', '{"name": "old-stack"}', 1.0);
INSERT INTO queries (id, stack_name, config_hash, start_time, end_time, input, input_hash,
    status, output, latency_s, prompt_tokens, completion_tokens)
    VALUES ('old-run', 'old-stack', 'sha256:old', 1700000000.0, 1700000002.5,
    '[{"role": "user", "content": "old question"}]', 'sha256:q', 'complete', 'old answer',
    2.5, 10, 20);
INSERT INTO calls (query_id, layer, idx, role, label, provider, model_name, output,
    start_time, end_time, latency_s, attempts)
    VALUES ('old-run', 1, 0, 'proposer', 'm', 'openai', 'm', 'old member answer',
    1700000000.0, 1700000001.0, 1.0, '[{"number": 1, "started_s": 0.0, "latency_s": 1.0}]');
"""


async def test_store_from_the_first_schema_is_migrated_and_keeps_its_data(tmp_path: Path) -> None:
    path = tmp_path / "v1.db"
    db = sqlite3.connect(path)
    db.executescript(V1_SCHEMA)
    db.close()
    with TraceStore(path) as store:
        old = store.get("old-run")
        assert old is not None
        assert (old.query.output, old.query.status, old.query.latency_s) == (
            "old answer",
            "complete",
            2.5,
        )
        assert old.query.source == "library"  # the new column's default
        assert old.query.stack_config == {"name": "old-stack"}
        assert old.query.input == [{"role": "user", "content": "old question"}]
        [call] = old.calls
        assert (call.output, call.ttft_s, call.attempts[0].latency_s) == (
            "old member answer",
            None,
            1.0,
        )
        # And the upgraded store records new runs alongside.
        stack, _ = echo_stack()
        async with stack:
            await traced_run(stack, CONV, TraceRecorder(store, stack=stack), run_id="new-run")
        assert store.flush()
        assert [q.id for q in store.list_queries()] == ["new-run", "old-run"]
    db = sqlite3.connect(path)
    names = [r[0] for r in db.execute("SELECT name FROM _moakit_migrations ORDER BY rowid")]
    db.close()
    assert names == [name for name, _ in MIGRATIONS] and len(names) >= 2
