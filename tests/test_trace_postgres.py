"""The PostgreSQL trace store on a real server the suite starts (``pg_harness``): the same
records as SQLite, migrations safe under concurrent opening, no password in anything it prints,
and a fleet of three ``moa serve`` processes writing into one database at once."""

from __future__ import annotations

import concurrent.futures
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from moakit.testing.fake_backend import FakeBackend
from moakit.trace import BaseTraceStore, TraceStore, open_trace_store
from moakit.trace.migrations import MIGRATIONS as SQLITE_MIGRATIONS
from moakit.trace.pg_migrations import MIGRATIONS as PG_MIGRATIONS
from moakit.trace.pg_migrations import applied
from moakit.trace.postgres import PostgresTraceStore, safe_url
from moakit.trace.records import CallRecord, QueryRecord, ToolCallRecord
from pg_harness import fresh_database, postgres_server


@pytest.fixture(scope="module")
def pg_server() -> Iterator[str]:
    with postgres_server() as url:
        yield url


@pytest.fixture
def pg_url(pg_server: str, request: pytest.FixtureRequest) -> str:
    return fresh_database(pg_server, "t_" + request.node.name.lower()[:40])


def _query(qid: str, **kw: Any) -> QueryRecord:
    return QueryRecord(
        id=qid,
        stack_name="s",
        config_hash="h1",
        stack_config={"name": "s"},
        start_time=kw.pop("start_time", time.time()),
        input=[{"role": "user", "content": "hello"}],
        **kw,
    )


def _call(qid: str, idx: int, output: str) -> CallRecord:
    return CallRecord(
        query_id=qid,
        layer=1,
        index=idx,
        role="proposer",
        label=f"p{idx}",
        provider="openai",
        model_name="m",
        output=output,
        start_time=1.0,
        end_time=2.0,
        latency_s=1.0,
    )


def _write_and_read(store: BaseTraceStore) -> dict[str, Any]:
    q = _query("abcd1234", start_time=1_790_000_000.25)
    store.query_started(q)
    store.call_finished(_call(q.id, 0, "first"))
    store.call_finished(_call(q.id, 1, "nul \x00 inside"))
    calling = _call(q.id, 2, "")
    calling.tool_calls = [ToolCallRecord("call_1", "get_weather", '{"city": "Paris"}')]
    store.call_finished(calling)
    q.status, q.output, q.latency_s = "complete", "final answer", 1.5
    q.tool_calls = list(calling.tool_calls)
    q.advice, q.advice_from = "reused", "an-earlier-run"
    store.query_finished(q, [])
    assert store.flush()
    record = store.get(store.resolve("abcd") or "")
    assert record is not None
    return record.to_json()


def test_postgres_reads_back_what_sqlite_does(pg_url: str, tmp_path: Path) -> None:
    with open_trace_store(pg_url) as pg, open_trace_store(tmp_path / "t.db") as lite:
        assert isinstance(pg, PostgresTraceStore) and isinstance(lite, TraceStore)
        from_pg, from_lite = _write_and_read(pg), _write_and_read(lite)
        # Postgres text cannot hold NUL: that one character is replaced, the record is kept.
        assert from_pg["calls"][1]["output"] == "nul \ufffd inside"
        from_pg["calls"][1]["output"] = from_lite["calls"][1]["output"]
        assert from_pg == from_lite
        # Tool calls and the advice state (issue 23) come back from both.
        call = {"id": "call_1", "name": "get_weather", "arguments": '{"city": "Paris"}'}
        assert from_pg["calls"][2]["tool_calls"] == [{**call, "arguments_hash": None}]
        assert from_pg["query"]["tool_calls"] == from_pg["calls"][2]["tool_calls"]
        assert from_pg["query"]["advice"] == "reused"
        assert from_pg["query"]["advice_from"] == "an-earlier-run"
        assert pg.dropped == 0
        assert [q.id for q in pg.list_queries(status="complete")] == ["abcd1234"]
        assert pg.stats().queries == 1 and pg.stats().calls == 3
        assert pg.prune(1.0) == 1 and pg.stats().queries == 0


def test_migrations_mirror_sqlite_and_survive_concurrent_opening(pg_url: str) -> None:
    assert [name for name, _ in PG_MIGRATIONS] == [name for name, _ in SQLITE_MIGRATIONS]
    # Five processes' worth of stores opening a fresh database at the same moment.
    with concurrent.futures.ThreadPoolExecutor(5) as pool:
        stores = list(pool.map(lambda _: PostgresTraceStore(pg_url), range(5)))
    for store in stores:
        store.close()
    with psycopg.connect(pg_url, row_factory=psycopg.rows.dict_row) as db:
        assert applied(db) == [name for name, _ in PG_MIGRATIONS]


def test_a_database_from_before_tools_migrates_forward(pg_url: str) -> None:
    names = [name for name, _ in PG_MIGRATIONS]
    shipped = names.index("m004_tool_calls")
    # The database as the moakit before tools left it: its migrations, and a query.
    with psycopg.connect(pg_url, autocommit=True, row_factory=psycopg.rows.dict_row) as db:
        db.execute(
            "CREATE TABLE _moakit_migrations "
            "(seq SERIAL, name TEXT PRIMARY KEY, applied_at DOUBLE PRECISION)"
        )
        for name, fn in PG_MIGRATIONS[:shipped]:
            fn(db)
            db.execute("INSERT INTO _moakit_migrations (name, applied_at) VALUES (%s, 0)", (name,))
        db.execute(
            "INSERT INTO queries (id, stack_name, start_time, status, output)"
            " VALUES ('old-run', 's', 1.0, 'complete', 'an old answer')"
        )
    with PostgresTraceStore(pg_url) as store:
        old = store.get("old-run")
        assert old is not None and old.query.output == "an old answer"
        assert old.query.tool_calls == [] and old.query.advice is None
        from_new = _write_and_read(store)
    assert from_new["query"]["advice"] == "reused"
    with psycopg.connect(pg_url, row_factory=psycopg.rows.dict_row) as db:
        assert applied(db) == names


def test_password_never_shown(pg_server: str) -> None:
    # Trust auth ignores the password, so a URL may carry one and still connect.
    url = pg_server.replace("moakit@", "moakit:s3cret-pw@")
    with open_trace_store(url) as store:
        assert "s3cret-pw" not in store.location and "s3cret-pw" not in repr(store.stats())
    dead = url.rsplit(":", 1)[0] + ":1/postgres"  # nothing listens on port 1
    with pytest.raises(ConnectionError) as info:
        open_trace_store(dead)
    assert "s3cret-pw" not in str(info.value) and "127.0.0.1" in str(info.value)
    assert safe_url(dead) == "postgresql://moakit:***@127.0.0.1:1/postgres"


# -- a fleet: three `moa serve` processes, one store -------------------------------------------

STACK = """
name = "fleet"
[defaults]
provider = "openai"
base_url = "{base_url}"
max_tokens = 16
retries = 0
[[layers]]
members = [{{ model = "p1" }}, {{ model = "p2" }}]
[aggregator]
model = "agg"
"""


def _start_server(port: int, args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "moakit.cli.main", "serve", "--port", str(port), *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def _wait_ready(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            err = proc.stderr.read().decode() if proc.stderr else ""
            pytest.fail(f"moa serve exited: {err[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    pytest.fail("moa serve did not start")


def _ask(port: int, n: int) -> list[str]:
    ids = []
    with httpx.Client(timeout=30) as client:
        for i in range(n):
            r = client.post(
                f"http://127.0.0.1:{port}/v1/chat/completions",
                json={"model": "fleet", "messages": [{"role": "user", "content": f"q{port}-{i}"}]},
            )
            assert r.status_code == 200, r.text
            ids.append(r.json()["id"])
    return ids


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_fleet(
    tmp_path: Path, trace_db: str, servers: int, workers: int, per_client: int
) -> tuple[list[str], list[int]]:
    """Start ``servers`` × ``moa serve --workers``, ask each from 2 clients at once; returns
    every answer's id and the ports."""
    backend = FakeBackend().start_in_thread()
    config = tmp_path / "fleet.toml"
    config.write_text(STACK.format(base_url=backend.base_url))
    env = {**os.environ, "MOAKIT_HOME": str(tmp_path / "home")}
    ports = [free_port() for _ in range(servers)]
    procs = [
        _start_server(
            port,
            [
                "--config",
                str(config),
                "--trace-db",
                trace_db,
                "--workers",
                str(workers),
                "--no-preload",
            ],
            env,
        )
        for port in ports
    ]
    try:
        for port, proc in zip(ports, procs, strict=True):
            _wait_ready(port, proc)
        with concurrent.futures.ThreadPoolExecutor(2 * servers) as pool:
            batches = pool.map(lambda port: _ask(port, per_client), [*ports, *ports])
            ids = [i for batch in batches for i in batch]
        return ids, ports
    finally:
        for proc in procs:
            proc.terminate()  # uvicorn's graceful shutdown: the stores commit their queues
        for proc in procs:
            proc.wait(30)
        backend.stop()


def test_three_servers_one_postgres_store(pg_url: str, tmp_path: Path) -> None:
    ids, _ = run_fleet(tmp_path, pg_url, servers=3, workers=1, per_client=8)
    assert len(ids) == 48 and len(set(ids)) == 48
    with psycopg.connect(pg_url) as db:
        rows = db.execute("SELECT id, status FROM queries").fetchall()
        calls = db.execute("SELECT query_id, COUNT(*) FROM calls GROUP BY query_id").fetchall()
    # Every query recorded exactly once (the primary key makes twice impossible; none lost).
    assert sorted(r[0] for r in rows) == sorted(ids)
    assert {r[1] for r in rows} == {"complete"}
    assert dict(calls) == dict.fromkeys(ids, 3)
    # One server's UI lists the traces that all three recorded.
    backend_ui = _ui_ids(pg_url, tmp_path)
    assert backend_ui == set(ids)


def _ui_ids(trace_db: str, tmp_path: Path) -> set[str]:
    """The trace ids a fresh ``moa serve`` on ``trace_db`` lists at /ui/api/traces."""
    port = free_port()
    env = {**os.environ, "MOAKIT_HOME": str(tmp_path / "home")}
    proc = _start_server(port, ["--trace-db", trace_db, "--no-preload"], env)
    try:
        _wait_ready(port, proc)
        r = httpx.get(f"http://127.0.0.1:{port}/ui/api/traces?limit=500", timeout=10)
        assert r.status_code == 200, r.text
        return {item["id"] for item in r.json()["data"]}
    finally:
        proc.terminate()
        proc.wait(30)


@pytest.mark.parametrize("store", ["sqlite", "postgres"])
def test_serve_workers_record_every_query_once(store: str, pg_url: str, tmp_path: Path) -> None:
    trace_db = pg_url if store == "postgres" else str(tmp_path / "traces.db")
    ids, _ = run_fleet(tmp_path, trace_db, servers=1, workers=2, per_client=10)
    assert len(set(ids)) == 20
    with open_trace_store(trace_db) as reader:
        listed = reader.list_queries(limit=100)
    assert sorted(q.id for q in listed) == sorted(ids)
    assert {q.status for q in listed} == {"complete"}
