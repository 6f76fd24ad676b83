"""What differs between the SQL databases a trace store runs on, in one small record, so the
writer thread and the readers are written once (``sql.py``) for SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any


def _same(text: str) -> str:
    return text


@dataclass(frozen=True)
class Dialect:
    name: str
    placeholder: str  # "?" (sqlite3) or "%s" (psycopg)
    begin: str  # the statement that opens a write transaction
    errors: tuple[type[BaseException], ...]  # the driver's exception classes
    # Worth retrying the same batch: SQLite's "database is locked", Postgres' deadlock or
    # serialization failures between servers writing at once.
    retryable: Callable[[BaseException], bool]
    in_transaction: Callable[[Any], bool]
    # The connection is gone (a server restart): reconnect and retry the batch once.
    broken: Callable[[Any], bool]
    # Text the database cannot hold as is (Postgres refuses NUL characters in text).
    clean: Callable[[str], str] = _same

    def sql(self, text: str) -> str:
        return text if self.placeholder == "?" else text.replace("?", self.placeholder)

    def executemany(self, db: Any, sql: str, rows: Sequence[tuple[Any, ...]]) -> None:
        if hasattr(db, "executemany"):
            db.executemany(sql, rows)
        else:
            with db.cursor() as cur:
                cur.executemany(sql, rows)

    def row(self, values: tuple[Any, ...]) -> tuple[Any, ...]:
        if self.clean is _same:
            return values
        return tuple(self.clean(v) if isinstance(v, str) else v for v in values)


def sqlite_dialect() -> Dialect:
    import sqlite3

    def locked(exc: BaseException) -> bool:
        return isinstance(exc, sqlite3.OperationalError) and (
            "locked" in str(exc) or "busy" in str(exc)
        )

    return Dialect(
        name="sqlite",
        placeholder="?",
        begin="BEGIN IMMEDIATE",
        errors=(sqlite3.Error,),
        retryable=locked,
        in_transaction=lambda db: bool(db.in_transaction),
        broken=lambda db: False,
    )
