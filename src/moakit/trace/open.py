"""``open_trace_store(target)``: the one way to open a trace store from a path or a URL.

Stores are plugins (hook ``register_trace_stores``: a URL scheme and an opener):

- ``postgresql://user@host:5432/db`` (or ``postgres://``): ``PostgresTraceStore`` (needs
  ``moakit[postgres]``); one database can take the traces of a whole fleet of servers;
- ``scheme://...`` of any installed plugin: that plugin's store;
- anything else is a SQLite file path (``TraceStore``);
- ``None``: ``$MOAKIT_TRACE_DB`` (a path or a URL), ``$MOAKIT_HOME/traces.db``, or the user
  data dir (see ``store.default_trace_path``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol

from moakit.hookspecs import Register, hookimpl
from moakit.plugins import registry
from moakit.trace.base import BaseTraceStore
from moakit.trace.redact import Redactor
from moakit.trace.store import TraceStore, default_trace_path

POSTGRES_SCHEMES = ("postgresql://", "postgres://")


class StoreOpener(Protocol):
    def __call__(
        self, url: str, *, store_prompts: bool, redactor: Redactor | None
    ) -> BaseTraceStore: ...


def _postgres(url: str, *, store_prompts: bool, redactor: Redactor | None) -> BaseTraceStore:
    from moakit.trace.postgres import PostgresTraceStore

    return PostgresTraceStore(url, store_prompts=store_prompts, redactor=redactor)


@hookimpl
def register_trace_stores(register: Register) -> None:
    register("postgresql", _postgres)
    register("postgres", _postgres)


def is_postgres_url(target: str | Path | None) -> bool:
    return isinstance(target, str) and target.lower().startswith(POSTGRES_SCHEMES)


def default_target() -> str:
    """Where traces go when nothing names a store: a URL from ``$MOAKIT_TRACE_DB`` or a path."""
    env = os.environ.get("MOAKIT_TRACE_DB")
    if env and is_postgres_url(env):
        return env
    return str(default_trace_path())


def open_trace_store(
    target: str | Path | None = None,
    *,
    store_prompts: bool = True,
    redactor: Redactor | None = None,
) -> BaseTraceStore:
    target = default_target() if target is None else target
    if isinstance(target, str) and "://" in target:
        scheme = target.split("://", 1)[0].lower()
        opener: StoreOpener = registry().trace_stores.get(scheme, field="trace_db")
        return opener(target, store_prompts=store_prompts, redactor=redactor)
    return TraceStore(Path(target), store_prompts=store_prompts, redactor=redactor)
