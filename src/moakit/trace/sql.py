"""What the SQLite and PostgreSQL trace stores share: the writer thread and every reader.

A subclass gives a ``Dialect``, a way to connect for writing, a connection for reading
(``_reading``) and its own ``stats``/``location``; the SQL itself is written once, with ``?``
placeholders that the dialect rewrites.
"""

from __future__ import annotations

import atexit
import json
import time
from abc import abstractmethod
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import replace
from typing import Any

from moakit.trace.base import BaseTraceStore
from moakit.trace.dialect import Dialect
from moakit.trace.records import (
    AttemptRecord,
    CallRecord,
    QueryRecord,
    ReferenceShown,
    ToolCallRecord,
    TraceRecord,
    reference_hash,
)
from moakit.trace.redact import Redactor
from moakit.trace.writer import Writer

Row = Mapping[str, Any]


class SqlTraceStore(BaseTraceStore):
    dialect: Dialect

    def _start_writer(
        self, connect: Callable[[], Any], *, store_prompts: bool, redactor: Redactor | None
    ) -> None:
        self.store_prompts = store_prompts
        self._writer = Writer(
            connect, store_prompts=store_prompts, redactor=redactor, dialect=self.dialect
        )
        # Queued records of a normally exiting process get written (a kill loses only the
        # last few milliseconds' queue, and the query stays marked incomplete).
        atexit.register(self._writer.stop)

    @abstractmethod
    def _reading(self) -> AbstractContextManager[Any]:
        """A connection to read with (rows as mappings), for the duration of the block."""

    def _close_readers(self) -> None:
        """Release the reading connections (called by ``close``)."""

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
        return self._writer.dropped

    def flush(self, timeout: float = 10.0) -> bool:
        return self._writer.flush(timeout)

    def close(self) -> None:
        self._writer.stop()
        atexit.unregister(self._writer.stop)
        self._close_readers()

    # -- reading ----------------------------------------------------------------------------

    def _all(self, sql: str, args: Sequence[Any] = ()) -> list[Row]:
        with self._reading() as db:
            return list(db.execute(self.dialect.sql(sql), tuple(args)).fetchall())

    def _one(self, sql: str, args: Sequence[Any] = ()) -> Row | None:
        with self._reading() as db:
            row: Row | None = db.execute(self.dialect.sql(sql), tuple(args)).fetchone()
            return row

    def list_queries(
        self,
        *,
        stack: str | None = None,
        status: str | None = None,
        since: float | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> list[QueryRecord]:
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
        return [_query(row) for row in self._all(sql, (*args, limit, offset))]

    def resolve(self, id_or_prefix: str) -> str | None:
        if not id_or_prefix:
            return None
        if self._one("SELECT id FROM queries WHERE id = ?", (id_or_prefix,)):
            return id_or_prefix
        if len(id_or_prefix) < 4:
            return None
        escaped = id_or_prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        rows = self._all(
            "SELECT id FROM queries WHERE id LIKE ? ESCAPE '\\' LIMIT 2", (escaped + "%",)
        )
        return str(rows[0]["id"]) if len(rows) == 1 else None

    def get(self, query_id: str) -> TraceRecord | None:
        with self._reading() as db:
            row = db.execute(
                self.dialect.sql("SELECT * FROM queries WHERE id = ?"), (query_id,)
            ).fetchone()
            if row is None:
                return None
            query = _query(row)
            if query.config_hash:
                cfg = db.execute(
                    self.dialect.sql("SELECT config FROM stack_configs WHERE config_hash = ?"),
                    (query.config_hash,),
                ).fetchone()
                query.stack_config = json.loads(cfg["config"]) if cfg else None
            calls = db.execute(
                self.dialect.sql("SELECT * FROM calls WHERE query_id = ? ORDER BY layer, idx"),
                (query_id,),
            ).fetchall()
        return TraceRecord(query=query, calls=[_call(c) for c in calls])

    def count_older_than(self, older_than_s: float) -> int:
        """How many queries ``prune(older_than_s)`` would delete now."""
        cutoff = time.time() - older_than_s
        row = self._one("SELECT COUNT(*) AS n FROM queries WHERE start_time < ?", (cutoff,))
        return int(row["n"]) if row is not None else 0

    def prune(self, older_than_s: float, *, vacuum: bool = False) -> int:
        cutoff = time.time() - older_than_s
        with self._reading() as db:
            db.execute(self.dialect.begin)
            try:
                deleted = db.execute(
                    self.dialect.sql("DELETE FROM queries WHERE start_time < ?"), (cutoff,)
                ).rowcount
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

    def _counts(self) -> tuple[dict[str, int], Row | None, list[Row]]:
        counts = {
            table: int(self._one(f"SELECT COUNT(*) AS n FROM {table}")["n"])  # type: ignore[index]
            for table in ("queries", "calls", "stack_configs")
        }
        span = self._one("SELECT MIN(start_time) AS oldest, MAX(start_time) AS newest FROM queries")
        statuses = self._all("SELECT status, COUNT(*) AS n FROM queries GROUP BY status")
        return counts, span, statuses


def rows_by_status(statuses: list[Row]) -> dict[str, int]:
    return {str(r["status"]): int(r["n"]) for r in statuses}


def _loads(text: str | None, default: Any) -> Any:
    return json.loads(text) if text else default


def _query(row: Row) -> QueryRecord:
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
        tool_calls=_tool_calls(row["tool_calls"]),
        advice=row["advice"],
        advice_from=row["advice_from"],
        decisions=_loads(row["decisions"], []),
    )


def _tool_calls(text: str | None) -> list[ToolCallRecord]:
    return [ToolCallRecord.from_json(c) for c in _loads(text, [])]


def _reference(data: dict[str, Any]) -> ReferenceShown:
    ref = ReferenceShown(**data)
    if ref.text_hash is None and ref.text is not None:
        ref.text_hash = reference_hash(ref)
    return ref


def _call(row: Row) -> CallRecord:
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
        tool_calls=_tool_calls(row["tool_calls"]),
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
