"""``TraceStore``: every recorded query and call, in one SQLite file.

Where the file lives, first match wins:

1. the ``path`` argument (``moa trace --db PATH``, a config value);
2. ``$MOAKIT_TRACE_DB``;
3. ``$MOAKIT_HOME/traces.db`` (the same override the presets directory honours);
4. ``traces.db`` in the user's data directory (``platformdirs``: ``~/.local/share/moakit`` on
   Linux, ``~/Library/Application Support/moakit`` on macOS).

Concurrency: WAL journal (readers never block the writer, nor it them), ``BEGIN IMMEDIATE`` write
transactions and a busy timeout, so many runs in one process (one writer thread, see writer.py)
and several processes on one file interleave safely. Each thread has its own connection.
"""

from __future__ import annotations

import atexit
import json
import os
import sqlite3
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import platformdirs

from moakit.errors import ConfigError
from moakit.trace.migrations import migrate
from moakit.trace.records import (
    AttemptRecord,
    CallRecord,
    QueryRecord,
    ReferenceShown,
    TraceRecord,
    reference_hash,
)
from moakit.trace.redact import Redactor
from moakit.trace.writer import Writer

BUSY_TIMEOUT_S = 10.0


def default_trace_path() -> Path:
    env = os.environ.get("MOAKIT_TRACE_DB")
    if env:
        return Path(env)
    home = os.environ.get("MOAKIT_HOME")
    if home:
        return Path(home) / "traces.db"
    return Path(platformdirs.user_data_dir("moakit", appauthor=False)) / "traces.db"


class TraceStoreError(ConfigError):
    """The trace store's file cannot be used (not a store, corrupt, unreadable); names it."""


_SQLITE_HEADER = b"SQLite format 3\x00"


def check_store_file(path: Path) -> None:
    """Refuse, naming the file, anything at ``path`` that is not a trace store moakit may open
    and migrate: a directory, a file that is not SQLite, another program's SQLite database."""
    if path.is_dir():
        raise TraceStoreError(f"{path} is a directory, not a trace store file")
    if not path.exists() or path.stat().st_size == 0:
        return  # a new store
    try:
        with path.open("rb") as f:
            header = f.read(len(_SQLITE_HEADER))
    except OSError as exc:
        raise TraceStoreError(f"cannot read the trace store {path}: {exc.strerror}") from None
    if header != _SQLITE_HEADER:
        raise TraceStoreError(f"{path} is not a moakit trace store (not a SQLite database)")
    try:
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        finally:
            db.close()
    except sqlite3.Error as exc:
        raise TraceStoreError(f"cannot use {path} as the trace store: {exc}") from None
    if tables and "_moakit_migrations" not in tables:
        raise TraceStoreError(
            f"{path} is a SQLite database but not a moakit trace store; it was left untouched"
        )


@dataclass(frozen=True)
class StoreStats:
    path: str
    queries: int
    calls: int
    stack_configs: int
    file_bytes: int  # the database file plus its WAL and shared-memory files
    oldest: float | None
    newest: float | None
    by_status: dict[str, int]


class TraceStore:
    """A trace sink (pass it to ``TraceRecorder``) and the reader behind ``moa trace``/the UI.

    ``store_prompts=False`` keeps only the hashes of the messages each query and call received
    (and of the references shown), never their text; outputs are still kept.
    """

    def __init__(
        self,
        path: str | Path | None = None,
        *,
        store_prompts: bool = True,
        redactor: Redactor | None = None,
    ) -> None:
        self.path = Path(path) if path is not None else default_trace_path()
        self.store_prompts = store_prompts
        self._local = threading.local()
        check_store_file(self.path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = self._connect()
            try:
                db.execute("PRAGMA journal_mode=WAL")
                migrate(db)
            finally:
                db.close()
        except (sqlite3.Error, OSError) as exc:
            raise TraceStoreError(f"cannot use {self.path} as the trace store: {exc}") from None
        self._writer = Writer(self._connect, store_prompts=store_prompts, redactor=redactor)
        # Queued records of a normally exiting process get written (a kill loses only the
        # last few milliseconds' queue, and the query stays marked incomplete).
        atexit.register(self._writer.stop)

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(
            self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
        )
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA foreign_keys=ON")
        db.execute("PRAGMA synchronous=NORMAL")  # durable across process crashes in WAL mode
        db.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_S * 1000)}")
        return db

    def _reader(self) -> sqlite3.Connection:
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            db = self._connect()
            self._local.db = db
        return db

    # -- the sink side: never blocks -------------------------------------------------------

    def query_started(self, query: QueryRecord) -> None:
        self._writer.put("query", replace(query))

    def call_finished(self, call: CallRecord) -> None:
        # Call records are immutable once handed over (the collector's rule): no copy.
        self._writer.put("call", call)

    def query_finished(self, query: QueryRecord, calls: Sequence[CallRecord]) -> None:
        # Every call already came through call_finished; only the query's end is new.
        self._writer.put("finish", replace(query))

    @property
    def dropped(self) -> int:
        """Records the writer could not store (each one logged as an error)."""
        return self._writer.dropped

    def flush(self, timeout: float = 10.0) -> bool:
        """Block until every record handed over so far is committed (tests, CLI exit)."""
        return self._writer.flush(timeout)

    def close(self) -> None:
        self._writer.stop()
        atexit.unregister(self._writer.stop)
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None

    def __enter__(self) -> TraceStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- reading ----------------------------------------------------------------------------

    def list_queries(
        self,
        *,
        stack: str | None = None,
        status: str | None = None,
        since: float | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> list[QueryRecord]:
        """Most recent first. ``since``: epoch seconds."""
        where: list[str] = []
        args: list[object] = []
        if stack:
            where.append("stack_name = ?")
            args.append(stack)
        if status:
            where.append("status = ?")
            args.append(status)
        if since is not None:
            where.append("start_time >= ?")
            args.append(since)
        sql = "SELECT * FROM queries"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY start_time DESC LIMIT ? OFFSET ?"
        rows = self._reader().execute(sql, (*args, limit, offset)).fetchall()
        return [_query(row) for row in rows]

    def resolve(self, id_or_prefix: str) -> str | None:
        """The full id for a unique prefix (at least 4 characters), or None."""
        if not id_or_prefix:
            return None
        db = self._reader()
        if db.execute("SELECT 1 FROM queries WHERE id = ?", (id_or_prefix,)).fetchone():
            return id_or_prefix
        if len(id_or_prefix) < 4:
            return None
        escaped = id_or_prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        rows = db.execute(
            "SELECT id FROM queries WHERE id LIKE ? ESCAPE '\\' LIMIT 2", (escaped + "%",)
        ).fetchall()
        return str(rows[0]["id"]) if len(rows) == 1 else None

    def get(self, query_id: str) -> TraceRecord | None:
        db = self._reader()
        row = db.execute("SELECT * FROM queries WHERE id = ?", (query_id,)).fetchone()
        if row is None:
            return None
        query = _query(row)
        if query.config_hash:
            cfg = db.execute(
                "SELECT config FROM stack_configs WHERE config_hash = ?", (query.config_hash,)
            ).fetchone()
            query.stack_config = json.loads(cfg["config"]) if cfg else None
        calls = db.execute(
            "SELECT * FROM calls WHERE query_id = ? ORDER BY layer, idx", (query_id,)
        ).fetchall()
        return TraceRecord(query=query, calls=[_call(c) for c in calls])

    def count_older_than(self, older_than_s: float) -> int:
        """How many queries ``prune(older_than_s)`` would delete now."""
        cutoff = time.time() - older_than_s
        row = (
            self._reader()
            .execute("SELECT COUNT(*) FROM queries WHERE start_time < ?", (cutoff,))
            .fetchone()
        )
        return int(row[0])

    def prune(self, older_than_s: float, *, vacuum: bool = False) -> int:
        """Delete queries (and their calls) started more than ``older_than_s`` ago."""
        cutoff = time.time() - older_than_s
        db = self._reader()
        db.execute("BEGIN IMMEDIATE")
        try:
            deleted = db.execute("DELETE FROM queries WHERE start_time < ?", (cutoff,)).rowcount
            db.execute(
                "DELETE FROM stack_configs WHERE config_hash NOT IN"
                " (SELECT config_hash FROM queries WHERE config_hash IS NOT NULL)"
            )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        if vacuum:
            db.execute("VACUUM")
        return int(deleted)

    def stats(self) -> StoreStats:
        db = self._reader()

        def count(table: str) -> int:
            return int(db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])

        span = db.execute("SELECT MIN(start_time), MAX(start_time) FROM queries").fetchone()
        statuses = db.execute("SELECT status, COUNT(*) FROM queries GROUP BY status").fetchall()
        size = sum(
            p.stat().st_size
            for p in (self.path, Path(f"{self.path}-wal"), Path(f"{self.path}-shm"))
            if p.exists()
        )
        return StoreStats(
            path=str(self.path),
            queries=count("queries"),
            calls=count("calls"),
            stack_configs=count("stack_configs"),
            file_bytes=size,
            oldest=span[0],
            newest=span[1],
            by_status={str(s): int(n) for s, n in statuses},
        )


def _loads(text: str | None, default: Any) -> Any:
    return json.loads(text) if text else default


def _query(row: sqlite3.Row) -> QueryRecord:
    return QueryRecord(
        id=row["id"],
        stack_name=row["stack_name"],
        config_hash=row["config_hash"],
        source=row["source"],
        start_time=row["start_time"],
        end_time=row["end_time"],
        input=_loads(row["input"], None),
        input_hash=row["input_hash"],
        status=row["status"],
        output=row["output"],
        latency_s=row["latency_s"],
        prompt_tokens=row["prompt_tokens"],
        completion_tokens=row["completion_tokens"],
        cost_usd=row["cost_usd"],
        llm_calls=row["llm_calls"],
        serial_rounds=row["serial_rounds"],
        status_message=row["status_message"],
    )


def _reference(data: dict[str, Any]) -> ReferenceShown:
    ref = ReferenceShown(**data)
    if ref.text_hash is None and ref.text is not None:
        ref.text_hash = reference_hash(ref)
    return ref


def _call(row: sqlite3.Row) -> CallRecord:
    return CallRecord(
        query_id=row["query_id"],
        layer=row["layer"],
        index=row["idx"],
        role=row["role"],
        label=row["label"],
        provider=row["provider"],
        model_name=row["model_name"],
        model_parameters=_loads(row["model_parameters"], {}),
        input=_loads(row["input"], None),
        input_hash=row["input_hash"],
        references=[_reference(r) for r in _loads(row["references_shown"], [])],
        output=row["output"],
        finish_reason=row["finish_reason"],
        truncated=bool(row["truncated"]),
        cancelled=bool(row["cancelled"]),
        prompt_tokens=row["prompt_tokens"],
        completion_tokens=row["completion_tokens"],
        cost_usd=row["cost_usd"],
        start_time=row["start_time"],
        end_time=row["end_time"],
        latency_s=row["latency_s"],
        ttft_s=row["ttft_s"],
        attempts=[AttemptRecord(**a) for a in _loads(row["attempts"], [])],
        steps=_loads(row["steps"], []),
        level=row["level"],
        status_message=row["status_message"],
    )
