"""``TraceRecorder``: the observer that records runs into a trace store (and any other sink).

    store = TraceStore()                                    # default path, see store.py
    result = await traced_run(stack, request, TraceRecorder(store, stack=stack))
    # or, as a plain observer (the query's input then comes from each call's MemberStarted):
    result = await stack.run(request, observers=[TraceRecorder(store, stack=stack)])

One recorder serves many concurrent runs: events are routed by their ``run_id``. Calling the
recorder never blocks: sinks only enqueue (the store writes from its own thread).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from moakit.events import Event, RunStarted
from moakit.messages import to_openai
from moakit.models.base import ChatRequest
from moakit.trace.collector import RunCollector, TraceSink, config_record
from moakit.trace.records import QueryRecord, content_hash

if TYPE_CHECKING:
    from moakit.engine import Stack
    from moakit.result import Result

log = logging.getLogger(__name__)

Observer = Callable[[object], None]
# Runs tracked at once; past this the oldest unfinished one is forgotten (see start_run).
MAX_ACTIVE_RUNS = 10_000


class TraceRecorder:
    """Records every run it observes. ``sinks``: a ``TraceStore``, an ``OtelSink``, or both.
    ``stack``: the stack being observed, which gives the trace its config; ``source`` names
    the surface (cli, server, ui, library)."""

    def __init__(
        self,
        *sinks: TraceSink,
        stack: Stack | None = None,
        source: str = "library",
    ) -> None:
        if not sinks:
            raise ValueError("TraceRecorder needs at least one sink (e.g. a TraceStore)")
        self.sinks: Sequence[TraceSink] = sinks
        self.stack = stack
        self.source = source
        self._runs: dict[str, RunCollector] = {}

    # -- explicit lifecycle (traced_events uses these: RunStarted carries no request) ---------

    def start_run(
        self,
        run_id: str,
        request: ChatRequest,
        *,
        stack: Stack | None = None,
        ts: float | None = None,
    ) -> RunCollector:
        """Begin a run's trace (idempotent: a later RunStarted for it changes nothing)."""
        existing = self._runs.get(run_id)
        if existing is not None:
            return existing
        stack = stack or self.stack
        messages = to_openai(request.messages)
        config = stack.config if stack is not None else None
        cfg_hash, cfg_json = config_record(config) if config is not None else (None, None)
        # The stack announces its own hash in RunStarted: store under it, so the query and its
        # config stay joined.
        if stack is not None:
            cfg_hash = stack.config_hash
        query = QueryRecord(
            id=run_id,
            stack_name=config.name if config is not None else "unknown",
            config_hash=cfg_hash,
            stack_config=cfg_json,
            source=self.source,
            start_time=ts if ts is not None else time.time(),
            input=messages,
            input_hash=content_hash(messages),
        )
        collector = RunCollector(query=query, sinks=self.sinks)
        self._runs[run_id] = collector
        if len(self._runs) > MAX_ACTIVE_RUNS:
            # A run whose end this recorder never sees (its consumer dropped it without closing)
            # must not be held forever: forget the oldest; its row stays "incomplete".
            oldest = next(iter(self._runs))
            del self._runs[oldest]
            log.warning("trace: run %s never ended; no longer tracked", oldest)
        collector.start()
        return collector

    def run_failed(self, run_id: str, error: str, result: Result | None) -> None:
        self._end(run_id, result, "failed", error)

    def run_cancelled(self, run_id: str, result: Result | None = None) -> None:
        self._end(run_id, result, "cancelled", "cancelled by the caller")

    # -- the observer -----------------------------------------------------------------------

    def __call__(self, event: Event) -> None:
        """Observer entry point."""
        run_id = event.run_id
        collector = self._runs.get(run_id)
        if collector is None:
            if not isinstance(event, RunStarted):
                return  # a run that started before this recorder was attached
            collector = self._start_from_event(event)
        collector.handle(event)
        if collector.finished:
            self._runs.pop(run_id, None)

    def _start_from_event(self, event: RunStarted) -> RunCollector:
        # RunStarted names the stack but carries no request: MemberStarted gives each call's
        # exact input, and the query's own input stays unknown unless the caller used
        # start_run().
        collector = self.start_run(event.run_id, ChatRequest(messages=[]), ts=event.ts)
        q = collector.query
        q.input = q.input_hash = None
        if self.stack is None or self.stack.config.name != event.stack:
            q.stack_name, q.stack_config, q.config_hash = event.stack, None, None
        return collector

    def _end(self, run_id: str, result: Result | None, status: str, error: str | None) -> None:
        collector = self._runs.pop(run_id, None)
        if collector is not None:
            collector.finish(result, status=status, error=error)

    @property
    def active_runs(self) -> int:
        return len(self._runs)
