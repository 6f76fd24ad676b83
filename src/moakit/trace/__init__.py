"""Every answer auditable: a trace store, its recorder, and exports.

from moakit.trace import TraceRecorder, TraceStore, traced_run
store = TraceStore()      # $MOAKIT_TRACE_DB, $MOAKIT_HOME/traces.db, or the data dir
result = await traced_run(stack, "Why is the sky blue?", TraceRecorder(store, stack=stack))
store.get(result_run_id)                 # TraceRecord: the query and each of its calls
"""

from __future__ import annotations

from moakit.trace.adapter import new_run_id, traced_events, traced_run
from moakit.trace.collector import TraceSink, config_hash
from moakit.trace.defaults import default_recorder, default_store, tracing_enabled
from moakit.trace.recorder import TraceRecorder
from moakit.trace.records import (
    AttemptRecord,
    CallRecord,
    QueryRecord,
    ReferenceShown,
    TraceRecord,
    content_hash,
)
from moakit.trace.redact import Redactor, secret_values
from moakit.trace.store import StoreStats, TraceStore, TraceStoreError, default_trace_path

__all__ = [
    "AttemptRecord",
    "CallRecord",
    "QueryRecord",
    "Redactor",
    "ReferenceShown",
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
    "secret_values",
    "traced_events",
    "traced_run",
    "tracing_enabled",
]
