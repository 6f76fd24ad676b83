"""Append-only schema migrations for the trace store (simonw/llm's ``migrations.py`` habit).

Each migration is a function, applied once, in order, and recorded by name in
``_moakit_migrations``. Never edit or reorder a migration that has shipped: add a new one. A store
written by an older moakit is brought up to date on open, its data kept.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable

Migration = Callable[[sqlite3.Connection], None]
MIGRATIONS: list[tuple[str, Migration]] = []


def migration(fn: Migration) -> Migration:
    MIGRATIONS.append((fn.__name__, fn))
    return fn


@migration
def m001_initial(db: sqlite3.Connection) -> None:
    # Stack configs are stored once per hash; queries point at them.
    db.execute(
        """
        CREATE TABLE stack_configs (
            config_hash TEXT PRIMARY KEY,
            name TEXT NOT NULL,
            config TEXT NOT NULL,
            first_seen REAL NOT NULL
        )"""
    )
    db.execute(
        """
        CREATE TABLE queries (
            id TEXT PRIMARY KEY,
            stack_name TEXT NOT NULL,
            config_hash TEXT,
            start_time REAL NOT NULL,
            end_time REAL,
            input TEXT,
            input_hash TEXT,
            status TEXT NOT NULL,
            output TEXT,
            latency_s REAL,
            prompt_tokens INTEGER NOT NULL DEFAULT 0,
            completion_tokens INTEGER NOT NULL DEFAULT 0,
            cost_usd REAL,
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
            prompt_tokens INTEGER NOT NULL DEFAULT 0,
            completion_tokens INTEGER NOT NULL DEFAULT 0,
            cost_usd REAL,
            start_time REAL NOT NULL,
            end_time REAL NOT NULL,
            latency_s REAL NOT NULL,
            attempts TEXT NOT NULL DEFAULT '[]',
            level TEXT NOT NULL DEFAULT 'DEFAULT',
            status_message TEXT,
            PRIMARY KEY (query_id, layer, idx)
        )"""
    )


@migration
def m002_source_ttft_indexes(db: sqlite3.Connection) -> None:
    # Which surface ran the query (cli, server, ui, library), time to first token per call (the
    # engine reports it per attempt), and the indexes `moa trace list` filters on.
    db.execute("ALTER TABLE queries ADD COLUMN source TEXT NOT NULL DEFAULT 'library'")
    db.execute("ALTER TABLE calls ADD COLUMN ttft_s REAL")
    db.execute("CREATE INDEX queries_start_time ON queries (start_time)")
    db.execute("CREATE INDEX queries_stack_start ON queries (stack_name, start_time)")


@migration
def m003_call_steps(db: sqlite3.Connection) -> None:
    # Chunk-wise ("staircase") writers answer in steps: per step, how many characters of each
    # reference it had seen and how much text it had written (JSON list; [] for one-shot calls).
    db.execute("ALTER TABLE calls ADD COLUMN steps TEXT NOT NULL DEFAULT '[]'")


@migration
def m004_tool_calls(db: sqlite3.Connection) -> None:
    # Tools (issue 23): each call's tool calls (JSON list of {id, name, arguments,
    # arguments_hash}), and per query the final answer's tool calls and whether the proposers'
    # advice was fresh or reused (and from which run).
    db.execute("ALTER TABLE calls ADD COLUMN tool_calls TEXT NOT NULL DEFAULT '[]'")
    db.execute("ALTER TABLE queries ADD COLUMN tool_calls TEXT NOT NULL DEFAULT '[]'")
    db.execute("ALTER TABLE queries ADD COLUMN advice TEXT")
    db.execute("ALTER TABLE queries ADD COLUMN advice_from TEXT")


@migration
def m005_decisions(db: sqlite3.Connection) -> None:
    # Adaptive compute (issue 24): what the engine decided per query (early exit, escalation,
    # budget and route cuts: JSON list of {kind, layer, detail, skipped, answer_from}).
    db.execute("ALTER TABLE queries ADD COLUMN decisions TEXT NOT NULL DEFAULT '[]'")


def applied(db: sqlite3.Connection) -> list[str]:
    db.execute(
        "CREATE TABLE IF NOT EXISTS _moakit_migrations (name TEXT PRIMARY KEY, applied_at REAL)"
    )
    return [row[0] for row in db.execute("SELECT name FROM _moakit_migrations ORDER BY rowid")]


def migrate(db: sqlite3.Connection) -> list[str]:
    """Apply every pending migration in one write transaction; returns the names applied.

    ``BEGIN IMMEDIATE`` takes the write lock first, so two processes opening a fresh file at
    once cannot both apply a migration: the second waits (busy timeout), then finds it done.
    ``db`` must be in autocommit mode (``isolation_level=None``).
    """
    db.execute("BEGIN IMMEDIATE")
    try:
        done = set(applied(db))
        ran: list[str] = []
        for name, fn in MIGRATIONS:
            if name in done:
                continue
            fn(db)
            db.execute(
                "INSERT INTO _moakit_migrations (name, applied_at) VALUES (?, ?)",
                (name, time.time()),
            )
            ran.append(name)
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    return ran
