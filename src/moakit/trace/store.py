"""``TraceStore``: every recorded query and call, in one SQLite file (the default store).

Where the file lives, first match wins:

1. the ``path`` argument (``moa trace --db PATH``, a config value);
2. ``$MOAKIT_TRACE_DB``;
3. ``$MOAKIT_HOME/traces.db`` (the same override the presets directory honours);
4. ``traces.db`` in the user's data directory (``platformdirs``: ``~/.local/share/moakit`` on
   Linux, ``~/Library/Application Support/moakit`` on macOS).

Concurrency: WAL journal (readers never block the writer, nor it them), ``BEGIN IMMEDIATE`` write
transactions and a busy timeout, so many runs in one process (one writer thread, see writer.py)
and several processes on one file (``moa serve --workers N``) interleave safely. Each thread has
its own connection. A fleet of servers on several machines shares a PostgreSQL store instead
(``postgres.py``); both implement ``base.BaseTraceStore``.
"""

from __future__ import annotations

import contextlib
import os
import random
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import platformdirs

from moakit.errors import ConfigError
from moakit.trace.base import StoreStats
from moakit.trace.dialect import sqlite_dialect
from moakit.trace.migrations import migrate
from moakit.trace.redact import Redactor
from moakit.trace.sql import SqlTraceStore, rows_by_status

BUSY_TIMEOUT_S = 10.0


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    text = str(exc)
    return "database is locked" in text or "database is busy" in text


__all__ = [
    "BUSY_TIMEOUT_S",
    "StoreStats",
    "TraceStore",
    "TraceStoreError",
    "check_store_file",
    "default_trace_path",
]


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


class TraceStore(SqlTraceStore):
    """The SQLite trace store. ``store_prompts=False`` keeps only the hashes of the messages
    each query and call received (and of the references shown), never their text; outputs are
    still kept."""

    dialect = sqlite_dialect()

    def __init__(
        self,
        path: str | Path | None = None,
        *,
        store_prompts: bool = True,
        redactor: Redactor | None = None,
    ) -> None:
        self.path = Path(path) if path is not None else default_trace_path()
        check_store_file(self.path)
        self._local = threading.local()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._prepare_file()
        except (sqlite3.Error, OSError) as exc:
            raise TraceStoreError(f"cannot use {self.path} as the trace store: {exc}") from None
        self._start_writer(self._connect, store_prompts=store_prompts, redactor=redactor)

    def _prepare_file(self) -> None:
        """Switch the file to WAL and apply pending migrations, retrying while it is locked.

        The busy timeout alone does not cover two processes opening a fresh file at once:
        switching a rollback-journal file to WAL escalates a shared lock, and when both hold one
        SQLite answers "database is locked" at once instead of waiting (waiting could deadlock).
        The loser tries again shortly; by then the file is in WAL mode, or about to be."""
        deadline = time.monotonic() + BUSY_TIMEOUT_S
        while True:
            db = self._connect()
            try:
                db.execute("PRAGMA journal_mode=WAL")
                migrate(db)
                return
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc) or time.monotonic() >= deadline:
                    raise
            finally:
                db.close()
            time.sleep(random.uniform(0.01, 0.05))  # apart, so two losers do not collide again

    @property
    def location(self) -> str:
        return str(self.path)

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(
            self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
        )
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA foreign_keys=ON")
        db.execute("PRAGMA synchronous=NORMAL")  # durable across process crashes in WAL mode
        db.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_S * 1000)}")
        return db

    @contextlib.contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection]:
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            db = self._connect()
            self._local.db = db
        yield db

    def _close_readers(self) -> None:
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None

    def stats(self) -> StoreStats:
        counts, span, statuses = self._counts()
        size = sum(
            p.stat().st_size
            for p in (self.path, Path(f"{self.path}-wal"), Path(f"{self.path}-shm"))
            if p.exists()
        )
        return StoreStats(
            path=str(self.path),
            queries=counts["queries"],
            calls=counts["calls"],
            stack_configs=counts["stack_configs"],
            file_bytes=size,
            oldest=span["oldest"] if span else None,
            newest=span["newest"] if span else None,
            by_status=rows_by_status(statuses),
        )


SQLiteTraceStore = TraceStore
