"""Append-only schema migrations of the PostgreSQL trace store (the SQLite store's are in
``migrations.py``; the two lists keep the same names and the same columns, in each database's
types). Never edit or reorder a migration that has shipped: add a new one to both lists.

Several servers may open a fresh database at once: the whole migration runs under a
transaction-scoped advisory lock, so one applies it and the others then find it done.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

Migration = Callable[[Any], None]
MIGRATIONS: list[tuple[str, Migration]] = []
# pg_advisory_xact_lock key: any constant the application owns ("moakit" in ASCII).
LOCK_KEY = 0x6D6F616B6974


def migration(fn: Migration) -> Migration:
    MIGRATIONS.append((fn.__name__, fn))
    return fn


@migration
def m001_initial(db: Any) -> None:
    db.execute(
        """
        CREATE TABLE stack_configs (
            config_hash TEXT PRIMARY KEY,
            name TEXT NOT NULL,
            config TEXT NOT NULL,
            first_seen DOUBLE PRECISION NOT NULL
        )"""
    )
    db.execute(
        """
        CREATE TABLE queries (
            id TEXT PRIMARY KEY,
            stack_name TEXT NOT NULL,
            config_hash TEXT,
            start_time DOUBLE PRECISION NOT NULL,
            end_time DOUBLE PRECISION,
            input TEXT,
            input_hash TEXT,
            status TEXT NOT NULL,
            output TEXT,
            latency_s DOUBLE PRECISION,
            prompt_tokens BIGINT NOT NULL DEFAULT 0,
            completion_tokens BIGINT NOT NULL DEFAULT 0,
            cost_usd DOUBLE PRECISION,
            llm_calls INTEGER NOT NULL DEFAULT 0,
            serial_rounds INTEGER NOT NULL DEFAULT 0,
            status_message TEXT
        )"""
    )
    db.execute(
        """
        CREATE TABLE calls (
            query_id TEXT NOT NULL REFERENCES queries(id) ON DELETE CASCADE,
            layer INTEGER NOT NULL,
            idx INTEGER NOT NULL,
            role TEXT NOT NULL,
            label TEXT NOT NULL,
            provider TEXT NOT NULL,
            model_name TEXT NOT NULL,
            model_parameters TEXT NOT NULL DEFAULT '{}',
            input TEXT,
            input_hash TEXT,
            references_shown TEXT NOT NULL DEFAULT '[]',
            output TEXT,
            finish_reason TEXT,
            truncated INTEGER NOT NULL DEFAULT 0,
            cancelled INTEGER NOT NULL DEFAULT 0,
            prompt_tokens BIGINT NOT NULL DEFAULT 0,
            completion_tokens BIGINT NOT NULL DEFAULT 0,
            cost_usd DOUBLE PRECISION,
            start_time DOUBLE PRECISION NOT NULL,
            end_time DOUBLE PRECISION NOT NULL,
            latency_s DOUBLE PRECISION NOT NULL,
            attempts TEXT NOT NULL DEFAULT '[]',
            level TEXT NOT NULL DEFAULT 'DEFAULT',
            status_message TEXT,
            PRIMARY KEY (query_id, layer, idx)
        )"""
    )


@migration
def m002_source_ttft_indexes(db: Any) -> None:
    db.execute("ALTER TABLE queries ADD COLUMN source TEXT NOT NULL DEFAULT 'library'")
    db.execute("ALTER TABLE calls ADD COLUMN ttft_s DOUBLE PRECISION")
    db.execute("CREATE INDEX queries_start_time ON queries (start_time)")
    db.execute("CREATE INDEX queries_stack_start ON queries (stack_name, start_time)")


@migration
def m003_call_steps(db: Any) -> None:
    db.execute("ALTER TABLE calls ADD COLUMN steps TEXT NOT NULL DEFAULT '[]'")


@migration
def m004_tool_calls(db: Any) -> None:
    db.execute("ALTER TABLE calls ADD COLUMN tool_calls TEXT NOT NULL DEFAULT '[]'")
    db.execute("ALTER TABLE queries ADD COLUMN tool_calls TEXT NOT NULL DEFAULT '[]'")
    db.execute("ALTER TABLE queries ADD COLUMN advice TEXT")
    db.execute("ALTER TABLE queries ADD COLUMN advice_from TEXT")


@migration
def m005_decisions(db: Any) -> None:
    db.execute("ALTER TABLE queries ADD COLUMN decisions TEXT NOT NULL DEFAULT '[]'")


def migrate(db: Any) -> list[str]:
    """Apply every pending migration in one transaction; returns the names applied. ``db`` is
    a psycopg connection in autocommit mode."""
    db.execute("BEGIN")
    try:
        db.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_KEY,))
        db.execute(
            "CREATE TABLE IF NOT EXISTS _moakit_migrations "
            "(seq SERIAL, name TEXT PRIMARY KEY, applied_at DOUBLE PRECISION)"
        )
        done = {row["name"] for row in db.execute("SELECT name FROM _moakit_migrations")}
        ran: list[str] = []
        for name, fn in MIGRATIONS:
            if name in done:
                continue
            fn(db)
            db.execute(
                "INSERT INTO _moakit_migrations (name, applied_at) VALUES (%s, %s)",
                (name, time.time()),
            )
            ran.append(name)
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    return ran


def applied(db: Any) -> list[str]:
    return [row["name"] for row in db.execute("SELECT name FROM _moakit_migrations ORDER BY seq")]
