"""The store's writer thread: the only place that writes, with its own connection.

Callers on the event loop only put records on a queue (``put_nowait`` on an unbounded queue never
blocks); the thread drains whatever has accumulated and writes it in one transaction, so a
server under load pays one commit per batch, not per call. Privacy is applied here, off the
event loop: secrets scrubbed from every stored string, prompts replaced by their hashes when
``store_prompts`` is off. The SQL is the same for SQLite and PostgreSQL; ``Dialect`` says what
differs (placeholders, how a write transaction starts, which errors are worth a retry).
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from moakit.trace.dialect import Dialect, sqlite_dialect
from moakit.trace.records import (
    CallRecord,
    QueryRecord,
    ReferenceShown,
    ToolCallRecord,
    call_input_hash,
    reference_hash,
    tool_call_hash,
)
from moakit.trace.redact import Redactor, config_env_names

log = logging.getLogger(__name__)

# One batch: at most this many records per transaction (bounds a transaction's lock time).
BATCH_LIMIT = 500
# Under a backlog the writer works at most this share of the time, pausing up to MAX_PAUSE_S
# between batches: recording is bookkeeping and must not compete with serving queries. A
# finished call is still on disk within milliseconds whenever the process is not saturated.
DUTY_CYCLE = 0.25
MAX_PAUSE_S = 0.05
# Attempts at a batch that keeps hitting "database is locked" (another process holding the write
# lock past the busy timeout) before it is logged and dropped.
LOCKED_RETRIES = 5


@dataclass
class _Op:
    kind: str  # "query" | "call" | "finish" | "flush" | "stop"
    record: QueryRecord | CallRecord | None = None
    done: threading.Event | None = None


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)


class Writer:
    def __init__(
        self,
        connect: Callable[[], Any],
        *,
        store_prompts: bool,
        redactor: Redactor | None,
        dialect: Dialect | None = None,
    ) -> None:
        self._connect = connect
        self.dialect = dialect or sqlite_dialect()
        self._query_sql = self.dialect.sql(_QUERY_SQL)
        self._call_sql = self.dialect.sql(_CALL_SQL)
        self._config_sql = self.dialect.sql(_CONFIG_SQL)
        self.store_prompts = store_prompts
        self._fixed_redactor = redactor
        self._redactors: dict[str, Redactor] = {}
        self._configs_written: set[str] = set()
        self._env_names: dict[int, tuple[dict[str, Any] | None, set[str]]] = {}
        self._queue: queue.SimpleQueue[_Op] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.dropped = 0

    # -- producer side (any thread, never blocks) --------------------------------------------

    def put(self, kind: str, record: QueryRecord | CallRecord) -> None:
        self._ensure_started()
        self._queue.put_nowait(_Op(kind, record))

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything put so far is committed. False on timeout."""
        if self._thread is None:
            return True
        done = threading.Event()
        self._queue.put_nowait(_Op("flush", done=done))
        return done.wait(timeout)

    def stop(self, timeout: float = 10.0) -> None:
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is None:
            return
        self._queue.put_nowait(_Op("stop"))
        thread.join(timeout)

    def _ensure_started(self) -> None:
        if self._thread is not None:
            return
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="moakit-trace", daemon=True)
                self._thread.start()

    # -- the thread ---------------------------------------------------------------------------

    def _run(self) -> None:
        db: Any = None
        try:
            while True:
                batch = [self._queue.get()]
                while len(batch) < BATCH_LIMIT:
                    try:
                        batch.append(self._queue.get_nowait())
                    except queue.Empty:
                        break
                started = time.perf_counter()
                records = [op for op in batch if op.record is not None]
                try:
                    if records and db is None:
                        db = self._connect()
                    if db is not None:
                        try:
                            self._write(db, records)
                        except self.dialect.errors:
                            if not self.dialect.broken(db):
                                raise
                            # The server went away (a restart): one fresh connection, one retry.
                            log.warning("trace store: connection lost; reconnecting")
                            self._close(db)
                            db = None
                            db = self._connect()
                            self._write(db, records)
                except self.dialect.errors:
                    # The thread must outlive a bad batch (a full disk, a store deleted under
                    # it): later records, and every flush() waiting on this one, go on.
                    self.dropped += len(records)
                    log.exception("trace store: %d records not written", len(records))
                    if db is not None:
                        self._close(db)
                    db = None  # reconnect for the next batch
                finally:
                    for op in batch:
                        if op.done is not None:
                            op.done.set()
                if any(op.kind == "stop" for op in batch):
                    return
                if not self._queue.empty():
                    # A backlog means the process is busy: yield to it (the event loop serving
                    # queries shares our GIL), at most DUTY_CYCLE of the time spent writing.
                    busy = time.perf_counter() - started
                    time.sleep(min(MAX_PAUSE_S, busy * (1 - DUTY_CYCLE) / DUTY_CYCLE))
        finally:
            if db is not None:
                self._close(db)

    def _close(self, db: Any) -> None:
        try:
            db.close()
        except self.dialect.errors as exc:
            log.warning("trace store: closing a connection failed: %s", exc)

    def _write(self, db: Any, ops: list[_Op]) -> None:
        if not ops:
            return
        # Rows are built before the transaction (the write lock is held only for SQLite's own
        # work) and consecutive rows of one statement go in one executemany.
        statements: list[tuple[str, list[tuple[Any, ...]]]] = []
        for op in ops:
            for sql, values in self._rows(op):
                row = self.dialect.row(values)
                if statements and statements[-1][0] == sql:
                    statements[-1][1].append(row)
                else:
                    statements.append((sql, [row]))
        dialect = self.dialect
        for attempt in range(LOCKED_RETRIES):
            try:
                db.execute(dialect.begin)
                for sql, rows in statements:
                    dialect.executemany(db, sql, rows)
                db.execute("COMMIT")
                return
            except dialect.errors as exc:
                if dialect.broken(db):
                    raise
                if dialect.in_transaction(db):
                    db.execute("ROLLBACK")
                if not dialect.retryable(exc):
                    # One bad row (say, a call whose query was pruned meanwhile) must not cost
                    # the batch: write row by row, dropping only what SQLite refuses.
                    self._write_each(db, statements)
                    return
                time.sleep(0.05 * (2**attempt))
        self.dropped += len(ops)
        log.error("trace store: %d records dropped, database stayed locked", len(ops))

    def _write_each(self, db: Any, statements: list[tuple[str, list[tuple[Any, ...]]]]) -> None:
        refused: list[str] = []
        dialect = self.dialect
        for sql, rows in statements:
            for row in rows:
                try:
                    db.execute(dialect.begin)
                    db.execute(sql, row)
                    db.execute("COMMIT")
                except dialect.errors as exc:
                    if dialect.broken(db):
                        raise
                    if dialect.in_transaction(db):
                        db.execute("ROLLBACK")
                    refused.append(str(exc))
        if refused:
            self.dropped += len(refused)
            log.error("trace store: %d rows refused (%s)", len(refused), refused[0])

    def _rows(self, op: _Op) -> list[tuple[str, tuple[Any, ...]]]:
        if op.kind == "call" and isinstance(op.record, CallRecord):
            return [(self._call_sql, self._call_row(op.record))]
        if isinstance(op.record, QueryRecord):
            return self._query_rows(op.record, final=op.kind == "finish")
        return []

    def _redactor(self, query_id: str, config: dict[str, Any] | None = None) -> Redactor:
        if self._fixed_redactor is not None:
            return self._fixed_redactor
        found = self._redactors.get(query_id)
        if found is None:
            key = id(config)
            names = self._env_names.get(key)
            if names is None or names[0] is not config:
                names = (config, config_env_names(config))
                self._env_names = {key: names}  # the last config seen: the common case
            found = Redactor.from_environment(names[1])
            self._redactors[query_id] = found
        return found

    def _query_rows(self, q: QueryRecord, *, final: bool) -> list[tuple[str, tuple[Any, ...]]]:
        r = self._redactor(q.id, q.stack_config)
        if final:
            self._redactors.pop(q.id, None)
        rows: list[tuple[str, tuple[Any, ...]]] = []
        if (
            q.stack_config is not None
            and q.config_hash is not None
            and q.config_hash not in self._configs_written
        ):
            config = _dumps(r.value(q.stack_config))
            rows.append(
                (self._config_sql, (q.config_hash, r.text(q.stack_name), config, time.time()))
            )
            # ON CONFLICT DO NOTHING makes a repeat harmless should this batch be rolled back.
            self._configs_written.add(q.config_hash)
        stored_input = r.messages(q.input) if self.store_prompts and q.input is not None else None
        row = (
            q.id,
            r.text(q.stack_name),
            q.config_hash,
            q.source,
            q.start_time,
            q.end_time,
            _dumps(stored_input) if stored_input is not None else None,
            q.input_hash,
            q.status,
            r.text(q.output),
            q.latency_s,
            q.prompt_tokens,
            q.completion_tokens,
            q.cost_usd,
            q.llm_calls,
            q.serial_rounds,
            r.text(q.status_message),
            self._tool_calls(q.tool_calls, r),
            q.advice,
            q.advice_from,
            _dumps([{**d, "detail": r.text(d.get("detail"))} for d in q.decisions]),
        )
        rows.append((self._query_sql, row))
        return rows

    def _call_row(self, c: CallRecord) -> tuple[Any, ...]:
        r = self._redactor(c.query_id)
        stored_input = r.messages(c.input) if self.store_prompts and c.input is not None else None
        refs = [self._reference(ref, r) for ref in c.references]
        attempts = [
            {
                "number": a.number,
                "started_s": a.started_s,
                "latency_s": a.latency_s,
                "error": r.text(a.error),
                "ttft_s": a.ttft_s,
            }
            for a in c.attempts
        ]
        return (
            c.query_id,
            c.layer,
            c.index,
            c.role,
            r.text(c.label),
            c.provider,
            r.text(c.model_name),
            _dumps(r.value(c.model_parameters)) if c.model_parameters else "{}",
            _dumps(stored_input) if stored_input is not None else None,
            call_input_hash(c),
            _dumps(refs) if refs else "[]",
            r.text(c.output),
            c.finish_reason,
            int(c.truncated),
            int(c.cancelled),
            c.prompt_tokens,
            c.completion_tokens,
            c.cost_usd,
            c.start_time,
            c.end_time,
            c.latency_s,
            c.ttft_s,
            _dumps(attempts),
            _dumps(r.value(c.steps)) if c.steps else "[]",
            c.level,
            r.text(c.status_message),
            self._tool_calls(c.tool_calls, r),
        )

    def _tool_calls(self, calls: list[ToolCallRecord], r: Redactor) -> str:
        """The calls as JSON. Their arguments are user data, like prompts: without
        ``store_prompts`` only their hash is kept (names and ids stay)."""
        if not calls:
            return "[]"
        return _dumps(
            [
                {
                    "id": r.text(call.id),
                    "name": r.text(call.name),
                    "arguments": r.text(call.arguments) if self.store_prompts else None,
                    "arguments_hash": None if self.store_prompts else tool_call_hash(call),
                }
                for call in calls
            ]
        )

    def _reference(self, ref: ReferenceShown, r: Redactor) -> dict[str, Any]:
        return {
            "layer": ref.layer,
            "index": ref.index,
            "label": r.text(ref.label) or "",
            "model": r.text(ref.model) or "",
            # With the text stored its hash is redundant (the reader recomputes it): the
            # references are a large share of a trace's bytes.
            "text_hash": None if self.store_prompts else reference_hash(ref),
            "text": r.text(ref.text) if self.store_prompts else None,
            "truncated": ref.truncated,
        }


def _upsert_sql(table: str, columns: tuple[str, ...], key: tuple[str, ...]) -> str:
    updates = ", ".join(f"{c} = excluded.{c}" for c in columns if c not in key)
    return (
        f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' for _ in columns)})"
        f" ON CONFLICT ({', '.join(key)}) DO UPDATE SET {updates}"
    )


# Column orders of the rows built by _query_rows / _call_row.
_QUERY_COLUMNS = (
    "id", "stack_name", "config_hash", "source", "start_time", "end_time", "input",
    "input_hash", "status", "output", "latency_s", "prompt_tokens", "completion_tokens",
    "cost_usd", "llm_calls", "serial_rounds", "status_message", "tool_calls", "advice",
    "advice_from", "decisions",
)  # fmt: skip
_CALL_COLUMNS = (
    "query_id", "layer", "idx", "role", "label", "provider", "model_name", "model_parameters",
    "input", "input_hash", "references_shown", "output", "finish_reason", "truncated",
    "cancelled", "prompt_tokens", "completion_tokens", "cost_usd", "start_time", "end_time",
    "latency_s", "ttft_s", "attempts", "steps", "level", "status_message", "tool_calls",
)  # fmt: skip
_QUERY_SQL = _upsert_sql("queries", _QUERY_COLUMNS, ("id",))
_CALL_SQL = _upsert_sql("calls", _CALL_COLUMNS, ("query_id", "layer", "idx"))
_CONFIG_SQL = (
    "INSERT INTO stack_configs (config_hash, name, config, first_seen)"
    " VALUES (?, ?, ?, ?) ON CONFLICT (config_hash) DO NOTHING"
)
