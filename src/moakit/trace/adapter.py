"""Recording one run: the trace recorder observes it, and whatever ends it sets its status.

The engine feeds observers every event (``Stack.events(..., observers=...)``); what it cannot
say is how a run ended when it did not end by itself: the consumer closing the stream or being
cancelled (a client that went away), or an unexpected exception. ``traced_events`` turns those
into the query's status, so no trace is left "running" by a caller that stopped listening.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncGenerator, Sequence
from contextlib import aclosing

from moakit.engine import Stack
from moakit.engine.observers import Observer
from moakit.errors import QueryFailed
from moakit.events import Event, RunFinished
from moakit.messages import ChatRequest, MessagesLike, as_messages
from moakit.policies import BudgetConfig
from moakit.result import Result
from moakit.trace.recorder import TraceRecorder


def new_run_id() -> str:
    return uuid.uuid4().hex


async def traced_events(
    stack: Stack,
    request: ChatRequest | MessagesLike,
    recorder: TraceRecorder,
    *,
    run_id: str | None = None,
    observers: Sequence[Observer] = (),
    streaming: bool = True,
    member_deltas: bool = True,
    budget: BudgetConfig | None = None,
) -> AsyncGenerator[Event, None]:
    """``stack.events(request, ...)``, recorded. ``request`` may be a ChatRequest, a message
    list or one user message as a string. ``run_id`` defaults to a new uuid4 hex."""
    if not isinstance(request, ChatRequest):
        request = ChatRequest(messages=as_messages(request))
    run_id = run_id or new_run_id()
    # start_run gives the trace the query's input and config (RunStarted carries neither).
    recorder.start_run(run_id, request, stack=stack)
    events = stack.events(
        request,
        run_id=run_id,
        observers=[recorder, *observers],
        streaming=streaming,
        member_deltas=member_deltas,
        budget=budget,
    )
    finished = False
    try:
        async with aclosing(events):
            async for event in events:
                if isinstance(event, RunFinished):
                    finished = True
                yield event
    except QueryFailed:
        finished = True  # the engine's RunFailed event recorded it
        raise
    except (GeneratorExit, asyncio.CancelledError):
        raise
    except Exception as exc:  # recorded, then re-raised unchanged: the trace must show it
        finished = True
        recorder.run_failed(run_id, f"{type(exc).__name__}: {exc}", None)
        raise
    finally:
        if not finished:
            # Closed or cancelled by the consumer: the run did not end by itself.
            recorder.run_cancelled(run_id)


async def traced_run(
    stack: Stack,
    request: ChatRequest | MessagesLike,
    recorder: TraceRecorder,
    *,
    run_id: str | None = None,
    observers: Sequence[Observer] = (),
    streaming: bool = False,
    member_deltas: bool = True,
) -> Result:
    """``stack.run(request)``, recorded (non-streaming by default, as ``Stack.run``)."""
    events = traced_events(
        stack,
        request,
        recorder,
        run_id=run_id,
        observers=observers,
        streaming=streaming,
        member_deltas=member_deltas,
    )
    async with aclosing(events):
        async for event in events:
            if isinstance(event, RunFinished):
                return event.result
    raise AssertionError("a run always ends with RunFinished or an exception")
