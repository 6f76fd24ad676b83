"""Every answer auditable: a trace store, its recorder, and exports.

from moakit.trace import TraceRecorder, open_trace_store, traced_run
store = open_trace_store()   # $MOAKIT_TRACE_DB (a file or postgresql:// URL), or traces.db
result = await traced_run(stack, "Why is the sky blue?", TraceRecorder(store, stack=stack))
store.get(result_run_id)                 # TraceRecord: the query and each of its calls
"""

from __future__ import annotations

from moakit.config import config_hash
from moakit.hashing import content_hash
from moakit.trace.adapter import new_run_id, traced_events, traced_run
from moakit.trace.base import BaseTraceStore, StoreStats
from moakit.trace.collector import TraceSink
from moakit.trace.defaults import default_recorder, default_store, tracing_enabled
from moakit.trace.open import open_trace_store
from moakit.trace.recorder import TraceRecorder
from moakit.trace.records import (
    AttemptRecord,
    CallRecord,
    QueryRecord,
    ReferenceShown,
    TraceRecord,
)
from moakit.trace.redact import Redactor, secret_values
from moakit.trace.store import SQLiteTraceStore, TraceStore, TraceStoreError, default_trace_path

__all__ = [
    "AttemptRecord",
    "BaseTraceStore",
    "CallRecord",
    "QueryRecord",
    "Redactor",
    "ReferenceShown",
    "SQLiteTraceStore",
    "StoreStats",
    "TraceRecord",
    "TraceRecorder",
    "TraceSink",
    "TraceStore",
    "TraceStoreError",
    "config_hash",
    "content_hash",
    "default_recorder",
    "default_store",
    "default_trace_path",
    "new_run_id",
    "open_trace_store",
    "secret_values",
    "traced_events",
    "traced_run",
    "tracing_enabled",
]
