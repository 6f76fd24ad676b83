"""The recording the CLI and the server do by default, in one place.

    recorder = default_recorder(stack, source="cli")      # None when tracing is switched off
    events = traced_events(stack, messages, recorder) if recorder else stack.events(messages)

Environment (the operator's, never a request's):

- ``MOAKIT_TRACE=0`` (or ``false``/``off``/``no``) switches recording off;
- ``MOAKIT_TRACE_PROMPTS=0`` keeps only the hashes of prompts (``store_prompts=False``);
- ``MOAKIT_TRACE_DB`` / ``MOAKIT_HOME`` place the store (see ``store.default_trace_path``);
- ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or ``..._TRACES_ENDPOINT``) adds the OpenTelemetry export,
  when the ``otel`` extra is installed.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from moakit.trace.base import BaseTraceStore
from moakit.trace.collector import TraceSink
from moakit.trace.open import open_trace_store
from moakit.trace.recorder import TraceRecorder

if TYPE_CHECKING:
    from moakit.engine import Stack

log = logging.getLogger(__name__)
_OFF = ("0", "false", "off", "no")


def _flag(name: str, default: bool = True) -> bool:
    value = os.environ.get(name)
    return default if value is None else value.strip().lower() not in _OFF


def tracing_enabled() -> bool:
    return _flag("MOAKIT_TRACE")


def default_store(path: str | Path | None = None) -> BaseTraceStore:
    """The store at ``path`` (a file or a ``postgresql://`` URL), else the default one."""
    return open_trace_store(path, store_prompts=_flag("MOAKIT_TRACE_PROMPTS"))


def otel_sink() -> TraceSink | None:
    """The OTLP export configured by the environment, or None (not configured, or the
    ``otel`` extra is not installed: then say so once, since the operator asked for it)."""
    if not (
        os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    ):
        return None
    try:
        from moakit.trace.otel import OtelSink, otlp_tracer_provider
    except ImportError:
        log.warning("OTEL_EXPORTER_OTLP_ENDPOINT is set but moakit[otel] is not installed")
        return None
    return OtelSink(otlp_tracer_provider(), include_prompts=_flag("MOAKIT_TRACE_PROMPTS"))


def default_recorder(
    stack: Stack | None = None,
    *,
    source: str,
    store: BaseTraceStore | None = None,
) -> TraceRecorder | None:
    """A recorder into the default store (or ``store``), plus OpenTelemetry when configured;
    None when ``MOAKIT_TRACE`` switches recording off."""
    if not tracing_enabled():
        return None
    sinks: list[TraceSink] = [store or default_store()]
    extra = otel_sink()
    if extra is not None:
        sinks.append(extra)
    return TraceRecorder(*sinks, stack=stack, source=source)
