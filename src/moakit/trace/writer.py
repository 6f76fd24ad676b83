"""The store's writer thread: the only place that writes, with its own connection.

Callers on the event loop only put records on a queue (``put_nowait`` on an unbounded queue never
blocks); the thread drains whatever has accumulated and writes it in one transaction, so a
server under load pays one commit per batch, not per call. Privacy is applied here, off the
event loop: secrets scrubbed from every stored string, prompts replaced by their hashes when
``store_prompts`` is off.
"""

from __future__ import annotations

import json
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from moakit.trace.records import (
    CallRecord,
    QueryRecord,
    ReferenceShown,
    call_input_hash,
    reference_hash,
)
from moakit.trace.redact import Redactor

log = logging.getLogger(__name__)

# One batch: at most this many records per transaction (bounds a transaction's lock time).
BATCH_LIMIT = 500
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


def _config_env_names(config: dict[str, Any] | None) -> set[str]:
    """Every ``api_key_env`` named anywhere in a stack config (members, defaults, fallbacks)."""
    names: set[str] = set()

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            env = value.get("api_key_env")
            if isinstance(env, str):
                names.add(env)
            for v in value.values():
                walk(v)
        elif isinstance(value, list):
            for v in value:
                walk(v)

    walk(config)
    return names


class Writer:
    def __init__(
        self,
        connect: Callable[[], sqlite3.Connection],
        *,
        store_prompts: bool,
        redactor: Redactor | None,
    ) -> None:
        self._connect = connect
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
        db = self._connect()
        try:
            while True:
                batch = [self._queue.get()]
                while len(batch) < BATCH_LIMIT:
                    try:
                        batch.append(self._queue.get_nowait())
                    except queue.Empty:
                        break
                self._write(db, [op for op in batch if op.record is not None])
                for op in batch:
                    if op.done is not None:
                        op.done.set()
                if any(op.kind == "stop" for op in batch):
                    return
        finally:
            db.close()

    def _write(self, db: sqlite3.Connection, ops: list[_Op]) -> None:
        if not ops:
            return
        for attempt in range(LOCKED_RETRIES):
            try:
                db.execute("BEGIN IMMEDIATE")
                # No voluntary GIL yield is needed: every execute() releases the GIL, so the
                # event loop waits at most one record's Python work (~0.1 ms) for it.
                for op in ops:
                    self._apply(db, op)
                db.execute("COMMIT")
                return
            except sqlite3.OperationalError as exc:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                if "locked" not in str(exc) and "busy" not in str(exc):
                    raise
                time.sleep(0.05 * (2**attempt))
        self.dropped += len(ops)
        log.error("trace store: %d records dropped, database stayed locked", len(ops))

    def _apply(self, db: sqlite3.Connection, op: _Op) -> None:
        if op.kind == "call" and isinstance(op.record, CallRecord):
            self._write_call(db, op.record)
        elif isinstance(op.record, QueryRecord):
            self._write_query(db, op.record, final=op.kind == "finish")

    def _redactor(self, query_id: str, config: dict[str, Any] | None = None) -> Redactor:
        if self._fixed_redactor is not None:
            return self._fixed_redactor
        found = self._redactors.get(query_id)
        if found is None:
            key = id(config)
            names = self._env_names.get(key)
            if names is None or names[0] is not config:
                names = (config, _config_env_names(config))
                self._env_names = {key: names}  # the last config seen: the common case
            found = Redactor.from_environment(names[1])
            self._redactors[query_id] = found
        return found

    def _write_query(self, db: sqlite3.Connection, q: QueryRecord, *, final: bool) -> None:
        r = self._redactor(q.id, q.stack_config)
        if final:
            self._redactors.pop(q.id, None)
        if (
            q.stack_config is not None
            and q.config_hash is not None
            and q.config_hash not in self._configs_written
        ):
            db.execute(
                "INSERT OR IGNORE INTO stack_configs (config_hash, name, config, first_seen)"
                " VALUES (?, ?, ?, ?)",
                (q.config_hash, r.text(q.stack_name), _dumps(r.value(q.stack_config)), time.time()),
            )
            # Remembered only after commit would be stricter; a rolled-back batch is retried
            # whole, and INSERT OR IGNORE makes a repeat harmless either way.
            self._configs_written.add(q.config_hash)
        stored_input = r.messages(q.input) if self.store_prompts and q.input is not None else None
        row = {
            "id": q.id,
            "stack_name": r.text(q.stack_name),
            "config_hash": q.config_hash,
            "source": q.source,
            "start_time": q.start_time,
            "end_time": q.end_time,
            "input": _dumps(stored_input) if stored_input is not None else None,
            "input_hash": q.input_hash,
            "status": q.status,
            "output": r.text(q.output),
            "latency_s": q.latency_s,
            "prompt_tokens": q.prompt_tokens,
            "completion_tokens": q.completion_tokens,
            "cost_usd": q.cost_usd,
            "llm_calls": q.llm_calls,
            "serial_rounds": q.serial_rounds,
            "status_message": r.text(q.status_message),
        }
        _upsert(db, "queries", row, key=("id",))

    def _write_call(self, db: sqlite3.Connection, c: CallRecord) -> None:
        r = self._redactor(c.query_id)
        refs = [self._reference(ref, r) for ref in c.references]
        stored_input = r.messages(c.input) if self.store_prompts and c.input is not None else None
        row = {
            "query_id": c.query_id,
            "layer": c.layer,
            "idx": c.index,
            "role": c.role,
            "label": r.text(c.label),
            "provider": c.provider,
            "model_name": r.text(c.model_name),
            "model_parameters": _dumps(r.value(c.model_parameters)),
            "input": _dumps(stored_input) if stored_input is not None else None,
            "input_hash": call_input_hash(c),
            "references_shown": _dumps(refs),
            "output": r.text(c.output),
            "finish_reason": c.finish_reason,
            "truncated": int(c.truncated),
            "cancelled": int(c.cancelled),
            "prompt_tokens": c.prompt_tokens,
            "completion_tokens": c.completion_tokens,
            "cost_usd": c.cost_usd,
            "start_time": c.start_time,
            "end_time": c.end_time,
            "latency_s": c.latency_s,
            "ttft_s": c.ttft_s,
            "attempts": _dumps(
                [
                    {
                        "number": a.number,
                        "started_s": a.started_s,
                        "latency_s": a.latency_s,
                        "error": r.text(a.error),
                        "ttft_s": a.ttft_s,
                    }
                    for a in c.attempts
                ]
            ),
            "level": c.level,
            "status_message": r.text(c.status_message),
        }
        _upsert(db, "calls", row, key=("query_id", "layer", "idx"))

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


def _upsert(
    db: sqlite3.Connection, table: str, row: dict[str, Any], *, key: tuple[str, ...]
) -> None:
    columns = ", ".join(row)
    marks = ", ".join("?" for _ in row)
    updates = ", ".join(f"{c} = excluded.{c}" for c in row if c not in key)
    db.execute(
        f"INSERT INTO {table} ({columns}) VALUES ({marks})"
        f" ON CONFLICT ({', '.join(key)}) DO UPDATE SET {updates}",
        tuple(row.values()),
    )
