"""Recording a run with today's engine, which has no observers: wrap ``Stack.events``.

Thin on purpose. Once the engine delivers ``Stack.events(request, run_id=..., observers=...)``
(the engine contract), callers pass ``observers=[recorder]`` and need none of this; until then
``traced_events`` feeds every event to the recorder as the consumer receives it, and turns the
ways a run can end without ``RunFinished`` (a ``QueryFailed``, the consumer closing the stream or
being cancelled) into the query's status.
"""

from __future__ import annotations

import asyncio
import inspect
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

from moakit.engine import Stack
from moakit.errors import QueryFailed
from moakit.events import Event, RunFinished
from moakit.models.base import ChatRequest, Message
from moakit.result import Result
from moakit.trace.recorder import TraceRecorder


def new_run_id() -> str:
    return uuid.uuid4().hex


async def traced_events(
    stack: Stack,
    request: ChatRequest | Sequence[Message],
    recorder: TraceRecorder,
    *,
    run_id: str | None = None,
) -> AsyncIterator[Event]:
    """``stack.events(request)``, recorded. ``run_id`` defaults to a new uuid4 hex."""
    if not isinstance(request, ChatRequest):
        request = ChatRequest(messages=list(request))
    run_id = run_id or new_run_id()
    recorder.start_run(run_id, request, stack=stack)
    observe = recorder.bind(run_id)
    finished = False
    if _has_observers(stack):
        # The engine contract's Stack.events feeds observers itself (in order, before the
        # consumer sees each event): hand the recorder over instead of feeding it twice.
        # Typed loosely on purpose: this branch's Stack.events does not take these yet.
        contract_events: Any = stack.events
        events = contract_events(request, run_id=run_id, observers=[observe])
        feed = False
    else:
        events = stack.events(request)
        feed = True
    try:
        async for event in events:
            if feed:
                observe(event)
            if isinstance(event, RunFinished):
                finished = True
            yield event
    except QueryFailed as exc:
        recorder.run_failed(run_id, str(exc), exc.result)
        raise
    except (GeneratorExit, asyncio.CancelledError):
        recorder.run_cancelled(run_id)
        raise
    except Exception as exc:  # recorded, then re-raised unchanged: the trace must show it
        recorder.run_failed(run_id, f"{type(exc).__name__}: {exc}", None)
        raise
    finally:
        if not finished:
            # Every path above ended the run already; this covers a consumer that stopped
            # iterating right after the last event without closing us (the run is over).
            recorder.run_cancelled(run_id)


def _has_observers(stack: Stack) -> bool:
    params = inspect.signature(stack.events).parameters
    return "observers" in params and "run_id" in params


async def traced_run(
    stack: Stack,
    request: ChatRequest | Sequence[Message],
    recorder: TraceRecorder,
    *,
    run_id: str | None = None,
) -> Result:
    """``stack.run(request)``, recorded."""
    async for event in traced_events(stack, request, recorder, run_id=run_id):
        if isinstance(event, RunFinished):
            return event.result
    raise AssertionError("a run always ends with RunFinished or an exception")
