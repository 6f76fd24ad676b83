"""The batch work unit: answers one request with its stack, as an OpenAI batch output line.

One ``BatchWorker`` per executor worker (one per Ray actor): it builds each stack it is asked for
once and keeps it, so an embedded model loads once per worker. Every outcome is a line: an
answer, or the OpenAI-shaped error the server would have sent for the same request.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from moakit.batch.formats import fingerprint, response_line
from moakit.config import StackConfig
from moakit.engine import Stack
from moakit.errors import ConfigError, MissingKeyError, QueryFailed
from moakit.executors.base import Services
from moakit.executors.wrappers import wrap_for
from moakit.models.base import ChatRequest
from moakit.result import Result
from moakit.server.errors import ApiError, query_error
from moakit.server.runner import check_capabilities, check_output
from moakit.server.wire import completion_body
from moakit.trace.adapter import traced_run
from moakit.trace.recorder import TraceRecorder


@dataclass(frozen=True)
class BatchRequest:
    custom_id: str
    model: str  # the stack's name
    request: ChatRequest
    details: bool = False  # moa_details: the per-layer breakdown in the body


@dataclass(frozen=True)
class BatchAnswer:
    custom_id: str
    line: dict[str, Any]  # the output line
    cost_usd: float  # what the priced calls cost (the embedded model is free)
    unpriced_calls: int  # calls to a remote model without a price: their cost is unknown
    calls: int


@dataclass(frozen=True)
class BatchWorkerSpec:
    """Everything a worker needs, picklable: the stacks by name and where to trace."""

    configs: Mapping[str, StackConfig]
    trace_db: str | None = None  # a path or postgresql:// URL; None: no traces
    store_prompts: bool = True

    def __call__(self, services: Services) -> BatchWorker:
        return BatchWorker(self, services)


class BatchWorker:
    def __init__(self, spec: BatchWorkerSpec, services: Services) -> None:
        self.spec = spec
        self.services = services
        self._stacks: dict[str, Stack] = {}
        self._store: Any = None
        self._recorders: dict[str, TraceRecorder] = {}

    def _stack(self, name: str) -> Stack:
        stack = self._stacks.get(name)
        if stack is None:
            stack = Stack(self.spec.configs[name], wrap=wrap_for(self.services))
            self._stacks[name] = stack
        return stack

    def _recorder(self, name: str, stack: Stack) -> TraceRecorder | None:
        if self.spec.trace_db is None:
            return None
        if self._store is None:
            from moakit.trace.open import open_trace_store

            self._store = open_trace_store(
                self.spec.trace_db, store_prompts=self.spec.store_prompts
            )
        recorder = self._recorders.get(name)
        if recorder is None:
            recorder = TraceRecorder(self._store, stack=stack, source="batch")
            self._recorders[name] = recorder
        return recorder

    async def __call__(self, item: BatchRequest) -> BatchAnswer:
        run_id = f"batch-{uuid.uuid4().hex}"
        created = int(time.time())
        result: Result | None = None
        try:
            try:
                stack = self._stack(item.model)
            except MissingKeyError as err:
                raise ApiError(
                    400,
                    f"stack {item.model!r} cannot run: {err}",
                    param="body.model",
                    code="missing_api_key",
                ) from None
            except ConfigError as err:
                raise ApiError(400, str(err), param="body.model", code="invalid_stack") from None
            check_capabilities(stack, item.request)
            recorder = self._recorder(item.model, stack)
            try:
                if recorder is not None:
                    result = await traced_run(stack, item.request, recorder, run_id=run_id)
                else:
                    result = await stack.run(item.request, run_id=run_id)
            except QueryFailed as exc:
                result = exc.result
                raise query_error(exc) from None
            await check_output(result.final, item.request.response_format)
            body = completion_body(run_id, created, item.model, result, details=item.details)
            body["system_fingerprint"] = fingerprint(stack.config_hash)
            line = response_line(item.custom_id, 200, body, run_id)
        except ApiError as err:
            line = response_line(item.custom_id, err.status, err.body(), run_id)
        if result is None:
            return BatchAnswer(item.custom_id, line, 0.0, 0, 0)
        cost, unpriced = 0.0, 0
        for member in result.calls():
            if member.cost_usd is not None:
                cost += member.cost_usd
            elif member.provider != "local" and member.usage.total_tokens:
                unpriced += 1
        return BatchAnswer(item.custom_id, line, cost, unpriced, result.llm_calls)

    async def aclose(self) -> None:
        for stack in self._stacks.values():
            await stack.aclose()
        self._stacks.clear()
        if self._store is not None:
            self._store.close()
            self._store = None
