"""The trace store interface: what the recorder writes to and what ``moa trace`` and the UI read.

Implementations: ``TraceStore`` (SQLite, the default: one file) and ``PostgresTraceStore`` (one
database for a fleet of servers). Open one with ``moakit.trace.open_trace_store(path_or_url)``.
The sink side never blocks (records are queued and written by the store's own thread); the
reading side is synchronous (the server calls it from a thread pool).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Self

from moakit.trace.records import CallRecord, QueryRecord, TraceRecord


@dataclass(frozen=True)
class StoreStats:
    path: str  # the file, or the database URL without its password
    queries: int
    calls: int
    stack_configs: int
    file_bytes: int  # on disk: the SQLite file plus its WAL and shared memory; Postgres tables
    oldest: float | None
    newest: float | None
    by_status: dict[str, int]


class BaseTraceStore(ABC):
    """A trace sink (pass it to ``TraceRecorder``) and the reader behind ``moa trace``/the UI."""

    store_prompts: bool

    @property
    @abstractmethod
    def location(self) -> str:
        """Where the traces are, fit to print (a URL never shows its password)."""

    # -- the sink side: never blocks ---------------------------------------------------------

    @abstractmethod
    def query_started(self, query: QueryRecord) -> None: ...

    @abstractmethod
    def call_finished(self, call: CallRecord) -> None: ...

    @abstractmethod
    def query_finished(self, query: QueryRecord, calls: Sequence[CallRecord]) -> None: ...

    @property
    @abstractmethod
    def dropped(self) -> int:
        """Records the writer could not store (each one logged as an error)."""

    @abstractmethod
    def flush(self, timeout: float = 10.0) -> bool:
        """Block until every record handed over so far is committed."""

    @abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- reading ------------------------------------------------------------------------------

    @abstractmethod
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

    @abstractmethod
    def resolve(self, id_or_prefix: str) -> str | None:
        """The full id for a unique prefix (at least 4 characters), or None."""

    @abstractmethod
    def get(self, query_id: str) -> TraceRecord | None: ...

    @abstractmethod
    def count_older_than(self, older_than_s: float) -> int:
        """How many queries ``prune(older_than_s)`` would delete now."""

    @abstractmethod
    def prune(self, older_than_s: float, *, vacuum: bool = False) -> int:
        """Delete queries (and their calls) started more than ``older_than_s`` ago."""

    @abstractmethod
    def stats(self) -> StoreStats: ...
