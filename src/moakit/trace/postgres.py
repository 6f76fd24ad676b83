"""``PostgresTraceStore``: one trace store for a fleet of servers (``--trace-db postgresql://``).

Why psycopg 3 and not asyncpg: the store's writer is a thread of its own and its readers are
synchronous (``moa trace`` in a shell, the UI from a thread pool), exactly the shape of the SQLite
store; psycopg is a DB-API driver like ``sqlite3``, so both stores share one writer and one set
of readers (``sql.py``), and ``psycopg_pool`` keeps a few reading connections per process.
asyncpg is async-only: it would need an event loop inside the writer thread and another for
every synchronous reader.

Every query is one row keyed by its run id and every call one row keyed by (query, layer,
index); writes are upserts, so three servers writing at once (or a writer retrying a batch after
a deadlock) record each query exactly once. The URL's password, if any, is never printed:
``location`` shows the URL without it (libpq's ``PGPASSWORD`` or ``~/.pgpass`` keep it out of
the URL altogether).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import psycopg.errors
from psycopg.pq import TransactionStatus
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from moakit.trace.base import StoreStats
from moakit.trace.dialect import Dialect
from moakit.trace.pg_migrations import migrate
from moakit.trace.redact import Redactor
from moakit.trace.sql import SqlTraceStore, rows_by_status

CONNECT_TIMEOUT_S = 10
READERS = 4  # reading connections per process (the UI reads from a thread pool)


def safe_url(url: str) -> str:
    """``url`` without its password (for messages, ``moa trace stats`` and logs)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return urlunsplit((parts.scheme, user + host, parts.path, parts.query, parts.fragment))


def _retryable(exc: BaseException) -> bool:
    return isinstance(
        exc,
        psycopg.errors.DeadlockDetected
        | psycopg.errors.SerializationFailure
        | psycopg.errors.LockNotAvailable,
    )


def _in_transaction(db: Any) -> bool:
    return bool(db.info.transaction_status != TransactionStatus.IDLE)


def _broken(db: Any) -> bool:
    return bool(db.closed or db.broken)


def _no_nul(text: str) -> str:
    # PostgreSQL text cannot hold NUL; model output can. Keep the rest of the record.
    return text.replace("\x00", "\ufffd") if "\x00" in text else text


POSTGRES = Dialect(
    name="postgresql",
    placeholder="%s",
    begin="BEGIN",
    errors=(psycopg.Error,),
    retryable=_retryable,
    in_transaction=_in_transaction,
    broken=_broken,
    clean=_no_nul,
)


class PostgresTraceStore(SqlTraceStore):
    dialect = POSTGRES

    def __init__(
        self,
        url: str,
        *,
        store_prompts: bool = True,
        redactor: Redactor | None = None,
    ) -> None:
        self.url = url
        try:
            with self._connect() as db:
                migrate(db)
        except psycopg.OperationalError as exc:
            # libpq's message names host and user, never the password.
            raise ConnectionError(
                f"cannot open the trace store {safe_url(url)}: {str(exc).strip()}"
            ) from None
        self._pool = ConnectionPool(
            url,
            min_size=0,
            max_size=READERS,
            kwargs=self._connect_kwargs(),
            open=True,
            name="moakit-trace-readers",
        )
        self._start_writer(self._connect, store_prompts=store_prompts, redactor=redactor)

    @property
    def location(self) -> str:
        return safe_url(self.url)

    def _connect_kwargs(self) -> dict[str, Any]:
        return {
            "autocommit": True,
            "row_factory": dict_row,
            "connect_timeout": CONNECT_TIMEOUT_S,
            "application_name": "moakit-trace",
        }

    def _connect(self) -> psycopg.Connection[Any]:
        return psycopg.connect(self.url, **self._connect_kwargs())

    @contextlib.contextmanager
    def _reading(self) -> Iterator[psycopg.Connection[Any]]:
        with self._pool.connection() as db:
            yield db

    def _close_readers(self) -> None:
        self._pool.close()

    def stats(self) -> StoreStats:
        counts, span, statuses = self._counts()
        size = self._one(
            "SELECT COALESCE(SUM(pg_total_relation_size(c.oid)), 0) AS n FROM pg_class c"
            " WHERE c.relname IN ('queries', 'calls', 'stack_configs')"
            " AND c.relnamespace = current_schema()::regnamespace"
        )
        return StoreStats(
            path=self.location,
            queries=counts["queries"],
            calls=counts["calls"],
            stack_configs=counts["stack_configs"],
            file_bytes=int(size["n"]) if size else 0,
            oldest=span["oldest"] if span else None,
            newest=span["newest"] if span else None,
            by_status=rows_by_status(statuses),
        )
